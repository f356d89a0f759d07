"""Drives azure-iot-hub (the official Python service SDK) against an azsim hub's REST API.

Run by tests/it/service_python_sdk.rs; prints JSON lines (key "event") and never a key.
The caller sets REQUESTS_CA_BUNDLE to the hub's CA (requests would use the system bundle).

    service_sdk.py registry SERVICE_CS_FILE DEVICE DEVICE_CS_FILE DEVICE_HOSTNAME
        create a SAS device (hub-generated keys), read it back, read and update its twin,
        write the device connection string to DEVICE_CS_FILE
    service_sdk.py invoke SERVICE_CS_FILE DEVICE METHOD
        invoke a direct method on the (connected) device and print status and payload
    service_sdk.py feedback SERVICE_CS_FILE DEVICE
        receive the C2D feedback batch (IoTHubHttpRuntimeManager; the raw response, since the
        SDK's convenience method discards it), abandon it, receive it again and complete it;
        then read the device's activity times and twin C2D count as the SDK parses them
"""

import json
import sys
import time

from azure.iot.hub import IoTHubHttpRuntimeManager, IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def manager(cs_file):
    with open(cs_file, encoding="utf-8") as f:
        return IoTHubRegistryManager.from_connection_string(f.read().strip())


def registry(rm, device_id, device_cs_file, device_hostname):
    created = rm.create_device_with_sas(device_id, None, None, "enabled")
    emit(
        "created",
        device_id=created.device_id,
        status=created.status,
        auth_type=created.authentication.type,
        has_keys=bool(created.authentication.symmetric_key.primary_key),
    )
    got = rm.get_device(device_id)
    emit("device", device_id=got.device_id, connection_state=got.connection_state, etag=got.etag)
    key = got.authentication.symmetric_key.primary_key
    with open(device_cs_file, "w", encoding="utf-8") as f:
        f.write(f"HostName={device_hostname};DeviceId={device_id};SharedAccessKey={key}")

    twin = rm.get_twin(device_id)
    emit("twin", device_id=twin.device_id, etag=twin.etag, desired=twin.properties.desired)
    patch = Twin(properties=TwinProperties(desired={"telemetryInterval": 7, "mode": "python"}))
    updated = rm.update_twin(device_id, patch, twin.etag)
    emit("twin_updated", desired=updated.properties.desired, etag=updated.etag)

    # An IoT Edge device and a leaf under it (device_scope from the edge device's).
    edge = rm.create_device_with_sas(device_id + "-edge", None, None, "enabled", iot_edge=True)
    leaf = rm.create_device_with_sas(
        device_id + "-leaf", None, None, "enabled", device_scope=edge.device_scope
    )
    got = rm.get_device(device_id + "-edge")
    emit(
        "edge",
        iot_edge=got.capabilities.iot_edge,
        device_scope=got.device_scope,
        leaf_iot_edge=leaf.capabilities.iot_edge,
        leaf_scope=leaf.device_scope,
        leaf_parents=leaf.parent_scopes,
    )
    return 0


def invoke(rm, device_id, method):
    req = CloudToDeviceMethod(method_name=method, payload={"from": "python"}, response_timeout_in_seconds=30)
    res = rm.invoke_device_method(device_id, req)
    emit("invoked", status=res.status, payload=res.payload)
    return 0


def receive_batch(rt, deadline_s=30):
    """Poll until a batch arrives; returns (lock token, records, raw response)."""
    deadline = time.monotonic() + deadline_s
    while True:
        raw = rt.protocol.cloud_to_device_messages.receive_feedback_notification(raw=True)
        resp = raw.response
        if resp.status_code == 200:
            etag = resp.headers["ETag"]
            return etag.strip('"'), json.loads(resp.text), resp
        if time.monotonic() > deadline:
            raise TimeoutError("no feedback batch within %d s" % deadline_s)
        time.sleep(0.2)


def feedback(cs_file, device_id):
    with open(cs_file, encoding="utf-8") as f:
        rt = IoTHubHttpRuntimeManager.from_connection_string(f.read().strip())
    token, records, resp = receive_batch(rt)
    emit(
        "feedback",
        records=[r for r in records if r.get("deviceId") == device_id],
        content_type=resp.headers.get("Content-Type"),
        etag_quoted=resp.headers["ETag"].startswith('"'),
    )
    rt.abandon_feedback_notification(token)
    emit("abandoned")
    token2, again, _ = receive_batch(rt, 5)
    rt.complete_feedback_notification(token2)
    emit("completed", same=[r["originalMessageId"] for r in again] == [r["originalMessageId"] for r in records], new_lock=token2 != token)
    # Nothing is left: the SDK's own call accepts the 204.
    rt.receive_feedback_notification()
    emit("empty")

    rm = manager(cs_file)
    dev = rm.get_device(device_id)
    twin = rm.get_twin(device_id)
    emit(
        "activity",
        last_activity_time=dev.last_activity_time.isoformat(),
        connection_state_updated_time=dev.connection_state_updated_time.isoformat(),
        connection_state=dev.connection_state,
        twin_last_activity_time=twin.last_activity_time.isoformat(),
        twin_c2d_count=twin.cloud_to_device_message_count,
    )
    return 0


def main():
    action, cs_file, device_id = sys.argv[1:4]
    if action == "feedback":
        return feedback(cs_file, device_id)
    rm = manager(cs_file)
    if action == "registry":
        return registry(rm, device_id, sys.argv[4], sys.argv[5])
    return invoke(rm, device_id, sys.argv[4])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        emit("error", kind=type(e).__name__, message=str(e)[:500])
        sys.exit(1)
