"""Drives azure-iot-device (the official Python device SDK) against an azsim hub.

Run by tests/it/service_python_sdk.rs; talks to it through JSON lines on stdout (one object
per line, key "event") and never prints a key or a token.

    device_sdk.py full CS_FILE CA_FILE      connect, telemetry, twin get, reported patch, then wait
                                             for one C2D, one method and one desired patch
    device_sdk.py responder CS_FILE CA_FILE connect and answer direct methods until stdin closes

The connection string is read from a file so it stays out of process listings. The SDK only
connects to port 8883, so the hub under test listens there (hostname "localhost").
"""

import json
import sys
import threading
import time

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse

TIMEOUT_S = 60


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def connect(cs_file, ca_file):
    with open(cs_file, encoding="utf-8") as f:
        cs = f.read().strip()
    with open(ca_file, encoding="utf-8") as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(
        cs, server_verification_cert=ca, connection_retry=False
    )
    client.connect()
    emit("connected")
    return client


def answer_methods(client, seen):
    def on_method(request):
        seen.append(request.name)
        emit("method", name=request.name, payload=request.payload, request_id=request.request_id)
        payload = {"echo": request.payload, "method": request.name}
        client.send_method_response(MethodResponse.create_from_method_request(request, 201, payload))

    client.on_method_request_received = on_method


def full(client):
    msg = Message(json.dumps({"temperature": 21.5}))
    msg.message_id = "py-msg-1"
    msg.correlation_id = "py-corr-1"
    msg.content_type = "application/json"
    msg.content_encoding = "utf-8"
    msg.custom_properties["alert"] = "hot"
    msg.custom_properties["source"] = "python sdk"
    client.send_message(msg)
    emit("telemetry_sent", message_id=msg.message_id)

    twin = client.get_twin()
    emit("twin", twin=twin)

    client.patch_twin_reported_properties({"firmware": "py-2.14.0", "sdk": {"name": "python"}})
    emit("reported_patched")

    got = {"c2d": threading.Event(), "method": threading.Event(), "desired": threading.Event()}

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
        got["c2d"].set()

    def on_desired(patch):
        emit("desired", patch=patch)
        got["desired"].set()

    seen = []
    client.on_message_received = on_message
    client.on_twin_desired_properties_patch_received = on_desired
    answer_methods(client, seen)
    emit("handlers_ready")

    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if seen:
            got["method"].set()
        if all(e.is_set() for e in got.values()):
            break
        time.sleep(0.05)
    missing = sorted(k for k, e in got.items() if not e.is_set())
    if missing:
        emit("timeout", missing=missing)
        return 1
    emit("done")
    return 0


def responder(client):
    seen = []
    answer_methods(client, seen)
    emit("handlers_ready")
    sys.stdin.read()  # until the test closes stdin
    emit("done", methods=len(seen))
    return 0


def main():
    scenario, cs_file, ca_file = sys.argv[1:4]
    client = connect(cs_file, ca_file)
    try:
        return full(client) if scenario == "full" else responder(client)
    finally:
        client.shutdown()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line for the test's assertion message
        emit("error", kind=type(e).__name__, message=str(e))
        sys.exit(1)
