"""Drives azure-iot-device (the official Python device SDK) over MQTT over WebSockets against an
azsim hub.

Run by tests/it/hub_websocket.rs; talks to it through JSON lines on stdout (one object per line,
key "event") and never prints a key or a token.

    device_websockets.py CS_FILE CA_FILE   connect with websockets=True, send one telemetry
                                           message, read the twin, then answer one direct method
                                           and report back one desired patch

With websockets=True the SDK dials wss://{HostName}:443/$iothub/websocket (subprotocol mqtt),
so the hub under test serves HTTPS on 127.0.0.1:443 (hostname "localhost").
"""

import json
import sys
import threading

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse

TIMEOUT_S = 60


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def main():
    cs_file, ca_file = sys.argv[1:3]
    with open(cs_file, encoding="utf-8") as f:
        cs = f.read().strip()
    with open(ca_file, encoding="utf-8") as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(
        cs, server_verification_cert=ca, websockets=True, connection_retry=False
    )
    client.connect()
    emit("connected")
    try:
        msg = Message(json.dumps({"temperature": 22.5}))
        msg.message_id = "py-ws-1"
        msg.content_type = "application/json"
        msg.content_encoding = "utf-8"
        msg.custom_properties["transport"] = "websockets"
        client.send_message(msg)
        emit("telemetry_sent", message_id=msg.message_id)

        twin = client.get_twin()
        emit("twin", twin=twin)

        got_method = threading.Event()
        got_desired = threading.Event()

        def on_method(request):
            emit("method", name=request.name, payload=request.payload)
            payload = {"echo": request.payload, "method": request.name}
            client.send_method_response(
                MethodResponse.create_from_method_request(request, 201, payload)
            )
            got_method.set()

        def on_desired(patch):
            emit("desired", patch=patch)
            interval = patch.get("interval")
            client.patch_twin_reported_properties({"interval": interval})
            emit("reported_patched", interval=interval)
            got_desired.set()

        client.on_method_request_received = on_method
        client.on_twin_desired_properties_patch_received = on_desired
        emit("handlers_ready")

        missing = [
            name
            for name, ev in (("method", got_method), ("desired", got_desired))
            if not ev.wait(TIMEOUT_S)
        ]
        if missing:
            emit("timeout", missing=missing)
            return 1
        emit("done")
        return 0
    finally:
        client.shutdown()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line for the test's assertion message
        emit("error", kind=type(e).__name__, message=str(e))
        sys.exit(1)
