"""Drives configurations (automatic device management) through azure-iot-hub, the official
Python service SDK (IoTHubConfigurationManager, IoTHubRegistryManager), with azure-iot-device
as the targeted device, against an azsim hub.

Run by tests/it/service_configurations.rs; prints JSON lines (key "event") and never a key.
The caller sets REQUESTS_CA_BUNDLE to the hub's CA. The device SDK only connects to port 8883,
so the hub listens there (hostname "localhost").

    service_configurations.py main SERVICE_CS_FILE CA_FILE
        devices with tags, a device client on one of them, two configurations with
        priorities, updates (priority, target condition), the refused ones (immutable
        content, stale etag, bad id, bad content), testQueries, metrics, list, delete
    service_configurations.py restarted SERVICE_CS_FILE CA_FILE
        after a hub restart: what "main" left is still there

Waiting for the hub's evaluation is polling a twin (or a configuration) until it shows the
expected state, with a deadline; never a sleep deciding the outcome.
"""

import json
import queue
import sys
import time

from azure.iot.device import IoTHubDeviceClient
from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    ConfigurationQueriesTestInput,
    Twin,
)
from msrest.exceptions import HttpOperationError

DEADLINE_S = 30


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def raw_twin(rm, device_id):
    return rm.protocol.devices.get_twin(device_id, raw=True).response.json()


def wait_for(what, probe):
    """Polls probe() until it returns something truthy; fails after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for " + what)
        time.sleep(0.1)


def status_of(twin, cfg):
    return twin.get("configurations", {}).get(cfg, {}).get("status")


def wait_twin(rm, device_id, what, check):
    return wait_for(what, lambda: (lambda t: t if check(t) else None)(raw_twin(rm, device_id)))


def refused(call):
    """The HTTP status and body of a call that must fail."""
    try:
        call()
    except HttpOperationError as e:
        return {"status": e.response.status_code, "body": e.response.text, "code": e.response.headers.get("iothub-errorcode")}
    raise AssertionError("the call succeeded")


def config(cid, priority, condition, content, metrics=None):
    return Configuration(
        id=cid,
        schema_version="1.0",
        labels={"team": "azsim"},
        content=ConfigurationContent(device_content=content),
        target_condition=condition,
        priority=priority,
        metrics=ConfigurationMetrics(queries=metrics or {}),
    )


def device_client(rm, device_id, ca_file):
    dev = rm.get_device(device_id)
    cs = "HostName=localhost;DeviceId={};SharedAccessKey={}".format(
        device_id, dev.authentication.symmetric_key.primary_key
    )
    with open(ca_file, encoding="utf-8") as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=ca, connection_retry=False)
    patches = queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put
    client.connect()
    return client, patches


def next_patch(patches, want):
    """The first desired patch whose settings.mode is want."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no desired patch with mode " + want)
        p = patches.get(timeout=left)
        if p.get("settings", {}).get("mode") == want:
            return p


def main_scenario(rm, cm, ca_file):
    for dev_id, env in (("cfg-prod", "prod"), ("cfg-test", "test")):
        rm.create_device_with_sas(dev_id, None, None, "enabled")
        t = rm.get_twin(dev_id)
        rm.update_twin(dev_id, Twin(tags={"env": env}), t.etag)
    client, patches = device_client(rm, "cfg-prod", ca_file)
    emit("device_connected")

    low = cm.create_configuration(
        config(
            "cfg-low",
            1,
            "tags.env='prod'",
            {"properties.desired.settings": {"mode": "low", "interval": 10}},
            {"reportedLow": "SELECT deviceId FROM devices WHERE properties.reported.mode = 'low'"},
        )
    )
    emit(
        "created",
        id=low.id,
        etag=low.etag,
        priority=low.priority,
        created=bool(low.created_time_utc),
        system_queries=low.system_metrics.queries,
        labels=low.labels,
    )
    twin = wait_twin(rm, "cfg-prod", "cfg-low applied", lambda t: status_of(t, "cfg-low") == "Applied")
    patch = next_patch(patches, "low")
    emit("low_applied", desired=twin["properties"]["desired"], configurations=twin["configurations"], patch=patch)

    cm.create_configuration(
        config("cfg-high", 5, "tags.env='prod'", {"properties.desired.settings.mode": "high"})
    )
    twin = wait_twin(
        rm,
        "cfg-prod",
        "cfg-high applied",
        lambda t: status_of(t, "cfg-high") == "Applied" and status_of(t, "cfg-low") == "Targeted",
    )
    patch = next_patch(patches, "high")
    emit("high_wins", desired=twin["properties"]["desired"], configurations=twin["configurations"], patch=patch)

    # Priority update: cfg-low outranks cfg-high and is applied again.
    got = cm.get_configuration("cfg-low")
    got.priority = 10
    updated = cm.update_configuration(got, got.etag)
    twin = wait_twin(rm, "cfg-prod", "cfg-low wins again", lambda t: status_of(t, "cfg-low") == "Applied")
    patch = next_patch(patches, "low")
    emit(
        "priority_updated",
        priority=updated.priority,
        etag_changed=updated.etag != got.etag,
        desired=twin["properties"]["desired"],
        configurations=twin["configurations"],
    )

    # Target condition update: cfg-high moves to the test device.
    high = cm.get_configuration("cfg-high")
    high.target_condition = "tags.env='test'"
    cm.update_configuration(high, high.etag)
    test_twin = wait_twin(rm, "cfg-test", "cfg-high on cfg-test", lambda t: status_of(t, "cfg-high") == "Applied")
    prod_twin = wait_twin(rm, "cfg-prod", "cfg-high leaves cfg-prod", lambda t: status_of(t, "cfg-high") is None)
    emit(
        "condition_updated",
        test_desired=test_twin["properties"]["desired"],
        test_configurations=test_twin["configurations"],
        prod_configurations=prod_twin.get("configurations"),
    )

    # The refused ones.
    stale = cm.get_configuration("cfg-low")
    changed = cm.get_configuration("cfg-low")
    changed.content = ConfigurationContent(device_content={"properties.desired.settings": {"mode": "other"}})
    immutable = refused(lambda: cm.update_configuration(changed, changed.etag))
    stale.priority = 11
    cm.update_configuration(stale, stale.etag)
    stale.priority = 12
    conflict = refused(lambda: cm.update_configuration(stale, stale.etag))
    exists = refused(lambda: cm.create_configuration(config("cfg-low", 1, "", {})))
    bad_id = refused(lambda: cm.create_configuration(config("bad id", 1, "", {})))
    bad_key = refused(lambda: cm.create_configuration(config("cfg-bad", 1, "", {"tags.x": 1})))
    bad_cond = refused(lambda: cm.create_configuration(config("cfg-bad", 1, "tags.env = ", {})))
    bad_metric = refused(
        lambda: cm.create_configuration(config("cfg-bad", 1, "", {}, {"m": "SELECT FROM WHERE"}))
    )
    negative = refused(lambda: cm.create_configuration(config("cfg-bad", -1, "", {})))
    missing = refused(lambda: cm.get_configuration("cfg-none"))
    emit(
        "refused",
        immutable=immutable,
        conflict=conflict,
        exists=exists,
        bad_id=bad_id,
        bad_key=bad_key,
        bad_cond=bad_cond,
        bad_metric=bad_metric,
        negative=negative,
        missing=missing,
    )

    tested = cm.test_configuration_queries(
        ConfigurationQueriesTestInput(
            target_condition="tags.env = ",
            custom_metric_queries={"good": "SELECT deviceId FROM devices", "bad": "SELECT deviceId FROM"},
        )
    )
    emit(
        "tested",
        target_condition_error=tested.target_condition_error,
        custom_metric_query_errors=tested.custom_metric_query_errors,
    )

    # Metrics: the device reports mode low; the custom metric counts it.
    client.patch_twin_reported_properties({"mode": "low"})
    low = wait_for(
        "metric reportedLow",
        lambda: (lambda c: c if c.metrics.results.get("reportedLow") == 1 else None)(cm.get_configuration("cfg-low")),
    )
    emit("metrics", system=low.system_metrics.results, custom=low.metrics.results, queries=low.metrics.queries)

    listed = cm.get_configurations()
    top1 = cm.get_configurations(1)
    emit("listed", ids=sorted(c.id for c in listed), top1=len(top1))

    # Delete: a stale etag is refused; the twin keeps the desired properties it got.
    high = cm.get_configuration("cfg-high")
    delete_stale = refused(lambda: cm.delete_configuration("cfg-high", "AAAAAAAAAAA="))
    cm.delete_configuration("cfg-high", high.etag)
    gone = refused(lambda: cm.get_configuration("cfg-high"))
    test_twin = wait_twin(rm, "cfg-test", "cfg-high deleted", lambda t: status_of(t, "cfg-high") is None)
    emit(
        "deleted",
        delete_stale=delete_stale,
        gone=gone,
        test_desired=test_twin["properties"]["desired"],
        test_configurations=test_twin.get("configurations"),
    )
    client.shutdown()
    edge_scenario(rm, cm)
    return 0


def edge_scenario(rm, cm):
    """applyConfigurationContent and an automatic edge deployment (modulesContent)."""
    rm.create_device_with_sas("cfg-edge", None, None, "enabled", iot_edge=True)
    for module in ("$edgeAgent", "$edgeHub", "filter"):
        try:
            rm.create_module_with_sas("cfg-edge", module, None, None, None)
        except HttpOperationError as e:
            if e.response.status_code != 409:  # a hub that makes the system modules itself
                raise
    content = ConfigurationContent(
        modules_content={
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {"filter": {"version": "1.0"}}}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"all": "FROM /messages/* INTO $upstream"}}},
            "filter": {"properties.desired": {"threshold": 5}},
            "notDeployedYet": {"properties.desired": {"x": 1}},
        }
    )
    cm.apply_configuration_on_edge_device("cfg-edge", content)
    agent = rm.get_module_twin("cfg-edge", "$edgeAgent")
    hub = rm.get_module_twin("cfg-edge", "$edgeHub")
    filt = rm.get_module_twin("cfg-edge", "filter")
    not_edge = refused(lambda: cm.apply_configuration_on_edge_device("cfg-prod", content))
    emit(
        "applied_on_edge",
        agent=agent.properties.desired,
        hub=hub.properties.desired,
        filter=filt.properties.desired,
        not_edge=not_edge,
    )
    cm.create_configuration(
        Configuration(
            id="deploy-edge",
            content=ConfigurationContent(modules_content={"filter": {"properties.desired": {"threshold": 9}}}),
            target_condition="deviceId='cfg-edge'",
            priority=1,
        )
    )
    twin = wait_twin(rm, "cfg-edge", "deploy-edge applied", lambda t: status_of(t, "deploy-edge") == "Applied")
    filt = wait_for(
        "filter threshold 9",
        lambda: (lambda d: d if d.get("threshold") == 9 else None)(rm.get_module_twin("cfg-edge", "filter").properties.desired),
    )
    emit("deployed", configurations=twin["configurations"], filter=filt)


def restarted_scenario(rm, cm):
    low = cm.get_configuration("cfg-low")
    twin = raw_twin(rm, "cfg-prod")
    emit(
        "restarted",
        ids=sorted(c.id for c in cm.get_configurations()),
        priority=low.priority,
        system=low.system_metrics.results,
        configurations=twin.get("configurations"),
    )
    # Evaluation runs after the restart too: a new device with the tag gets the content.
    rm.create_device_with_sas("cfg-prod-2", None, None, "enabled")
    t = rm.get_twin("cfg-prod-2")
    rm.update_twin("cfg-prod-2", Twin(tags={"env": "prod"}), t.etag)
    twin = wait_twin(rm, "cfg-prod-2", "cfg-low on cfg-prod-2", lambda t: status_of(t, "cfg-low") == "Applied")
    emit("new_device", desired=twin["properties"]["desired"])
    return 0


def main():
    action, cs_file, ca_file = sys.argv[1:4]
    with open(cs_file, encoding="utf-8") as f:
        cs = f.read().strip()
    rm = IoTHubRegistryManager.from_connection_string(cs)
    cm = IoTHubConfigurationManager.from_connection_string(cs)
    if action == "main":
        return main_scenario(rm, cm, ca_file)
    return restarted_scenario(rm, cm)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        emit("error", kind=type(e).__name__, message=str(e)[:500])
        sys.exit(1)
