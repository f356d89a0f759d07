"""Drives azure-iot-device's X.509 client (IoTHubDeviceClient.create_from_x509_certificate)
against an azsim hub. Run by tests/it/hub_x509_python.rs; talks to it through JSON lines on
stdout (one object per line, key "event") and never prints a key.

    device_x509.py HOST CA_FILE DEVICE CERT KEY [DEVICE CERT KEY ...]

For each device in turn: connect with its certificate, send telemetry, patch reported
properties, then say "ready" and answer one direct method and wait for one desired patch; a
line on stdin moves on to the next device. A DEVICE written "!id" must be refused: the script
reports "refused" when connecting fails; one written "ws:id" connects over MQTT over WebSockets
(port 443) instead of MQTT (the SDK only dials port 8883).
"""

import json
import sys
import threading

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, X509

TIMEOUT_S = 60


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def run_device(host, ca, device_id, cert, key, websockets):
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=cert, key_file=key),
        hostname=host,
        device_id=device_id,
        server_verification_cert=ca,
        connection_retry=False,
        websockets=websockets,
    )
    got = {"method": threading.Event(), "desired": threading.Event()}

    def on_method(request):
        emit("method", device=device_id, name=request.name, payload=request.payload)
        client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"from": device_id})
        )
        got["method"].set()

    def on_patch(patch):
        emit("desired", device=device_id, patch=patch)
        got["desired"].set()

    client.on_method_request_received = on_method
    client.on_twin_desired_properties_patch_received = on_patch
    client.connect()
    emit("connected", device=device_id, websockets=websockets)
    msg = Message(json.dumps({"device": device_id, "x509": True}))
    msg.content_type = "application/json"
    msg.content_encoding = "utf-8"
    client.send_message(msg)
    emit("telemetry_sent", device=device_id)
    client.patch_twin_reported_properties({"auth": "x509", "device": device_id})
    emit("reported_patched", device=device_id)
    emit("ready", device=device_id)
    for name, ev in got.items():
        if not ev.wait(TIMEOUT_S):
            emit("timeout", device=device_id, waiting_for=name)
            client.shutdown()
            return False
    sys.stdin.readline()
    client.shutdown()
    emit("done", device=device_id)
    return True


def main():
    host, ca_file = sys.argv[1], sys.argv[2]
    with open(ca_file, encoding="utf-8") as f:
        ca = f.read()
    rest = sys.argv[3:]
    for i in range(0, len(rest), 3):
        device_id, cert, key = rest[i : i + 3]
        if device_id.startswith("!"):
            device_id = device_id[1:]
            client = IoTHubDeviceClient.create_from_x509_certificate(
                x509=X509(cert_file=cert, key_file=key),
                hostname=host,
                device_id=device_id,
                server_verification_cert=ca,
                connection_retry=False,
            )
            try:
                client.connect()
                emit("error", device=device_id, reason="connected, expected a refusal")
                client.shutdown()
            except Exception as e:  # the SDK raises its own exception types
                emit("refused", device=device_id, error=type(e).__name__)
            continue
        websockets = device_id.startswith("ws:")
        if websockets:
            device_id = device_id[3:]
        try:
            if not run_device(host, ca, device_id, cert, key, websockets):
                return 1
        except Exception as e:
            emit("error", device=device_id, reason=f"{type(e).__name__}: {e}")
            return 1
    emit("finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
