"""Sends cloud-to-device messages with azure-iot-hub (the official Python service SDK, which sends
C2D over AMQP with uamqp) to an azure-iot-device client, against an azsim hub.

Run by tests/it/hub_amqp_c2d.rs; talks to it through JSON lines on stdout (one object per line,
key "event") and never prints a key or a token.

    service_c2d_amqp.py SERVICE_CS_FILE DEVICE_CS_FILE CA_FILE DEVICE_ID

The service SDK derives every endpoint from HostName (HTTPS on 443, AMQPS on 5671) and the device
connects with websockets=True (443), so the hub under test serves HTTPS on 127.0.0.1:443 and
AMQPS on 127.0.0.1:5671 with hostname "localhost". uamqp trusts the CA through SSL_CERT_FILE.
"""

import json
import sys
import threading

from azure.iot.device import IoTHubDeviceClient
from azure.iot.hub import IoTHubRegistryManager

TIMEOUT_S = 60


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def main():
    service_cs_file, device_cs_file, ca_file, device_id = sys.argv[1:5]
    device = IoTHubDeviceClient.create_from_connection_string(
        read(device_cs_file),
        server_verification_cert=read(ca_file) + "\n",
        websockets=True,
        connection_retry=False,
    )
    device.connect()
    emit("connected")
    got = threading.Event()

    def on_message(m):
        data = m.data.decode("utf-8") if isinstance(m.data, bytes) else m.data
        emit(
            "c2d",
            data=data,
            message_id=m.message_id,
            correlation_id=m.correlation_id,
            content_type=m.content_type,
            content_encoding=m.content_encoding,
            custom_properties=dict(m.custom_properties),
        )
        got.set()

    try:
        device.on_message_received = on_message
        emit("handlers_ready")
        registry = IoTHubRegistryManager.from_connection_string(read(service_cs_file))
        try:
            registry.send_c2d_message(
                device_id,
                "hello from uamqp",
                properties={
                    "messageId": "py-amqp-1",
                    "correlationId": "py-corr-1",
                    "contentType": "text/plain",
                    "contentEncoding": "utf-8",
                    "iothub-ack": "full",
                    "color": "blue",
                },
            )
            emit("sent", message_id="py-amqp-1")
            try:
                registry.send_c2d_message("no-such-device", "lost")
                emit("error", kind="unexpected", message="a message to an unknown device was accepted")
                return 1
            except Exception as e:  # the SDK raises a plain Exception on a rejected transfer
                emit("refused", message=str(e))
        finally:
            registry.amqp_svc_client.disconnect_sync()
        if not got.wait(TIMEOUT_S):
            emit("timeout", missing=["c2d"])
            return 1
        emit("done")
        return 0
    finally:
        device.shutdown()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line for the test's assertion message
        emit("error", kind=type(e).__name__, message=str(e))
        sys.exit(1)
