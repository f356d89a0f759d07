"""Drives azure-iot-hub 2.7.0 (the official Python service SDK) through the hub's query, jobs v2
and bulk registry APIs.

Run by tests/it/hub_jobs.rs; prints JSON lines (key "event") and never a key. The caller sets
REQUESTS_CA_BUNDLE to the hub's CA and runs `azsim run` as device PREFIX-0 answering the
method "reboot" before this starts.

    service_query_jobs.py SERVICE_CS_FILE PREFIX
        bulk-create PREFIX-0..4 (bulk_create_or_update_devices), tag them through update_twin,
        query them page by page (query_iot_hub with max_item_count and continuation tokens),
        group and count them, send a bad query, run a method job on PREFIX-0 and a twin job
        on the odd devices (create_scheduled_job, get_scheduled_job until done), read the
        per-device results with a devices.jobs query, cancel a job scheduled for later
        (cancel_scheduled_job) and list jobs (query_scheduled_jobs)
"""

import datetime
import json
import sys
import time

from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    CloudToDeviceMethod,
    ExportImportDevice,
    JobRequest,
    QuerySpecification,
    Twin,
    TwinProperties,
)
from msrest.exceptions import HttpOperationError


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def row(r):
    """A query row as the service sent it. query_iot_hub deserializes every row as a Twin model
    (the generated client reads "[Twin]"): twin fields are its attributes, anything else (GROUP BY
    columns, a device job's outcome) lands in its additional_properties."""
    return {**r.additional_properties, **r.serialize(keep_readonly=True)}


def all_rows(rm, text, page):
    """Every row of a query, following continuation tokens; also the number of pages."""
    rows, token, pages = [], None, 0
    while True:
        result = rm.query_iot_hub(QuerySpecification(query=text), token, page)
        pages += 1
        rows.extend(row(r) for r in result.items)
        token = result.continuation_token
        if not token:
            return rows, pages, result.type


def wait_job(jm, job_id, deadline_s=60):
    end = time.time() + deadline_s
    while True:
        job = jm.get_scheduled_job(job_id)
        if job.status not in ("queued", "scheduled", "running", "enqueued"):
            return job
        if time.time() > end:
            raise RuntimeError(f"job {job_id} still {job.status}")
        time.sleep(0.2)


def stats(job):
    s = job.device_job_statistics
    return {
        "devices": s.device_count,
        "succeeded": s.succeeded_count,
        "failed": s.failed_count,
    }


def main():
    cs_file, prefix = sys.argv[1], sys.argv[2]
    with open(cs_file, encoding="utf-8") as f:
        cs = f.read().strip()
    rm = IoTHubRegistryManager.from_connection_string(cs)
    jm = IoTHubJobManager.from_connection_string(cs)
    ids = [f"{prefix}-{n}" for n in range(5)]

    # Bulk: create the five devices in one call (PREFIX-0 exists already: the caller made it
    # for azsim run, so it is an update), then a bad operation to see the per-device error.
    ops = [ExportImportDevice(id=i, import_mode="createOrUpdate", status="enabled") for i in ids]
    result = rm.bulk_create_or_update_devices(ops)
    emit("bulk", is_successful=result.is_successful, errors=len(result.errors or []))
    # The service answers a call with failed operations 400 with the per-device errors, which
    # the SDK returns as a result (it accepts 200 and 400) rather than raising.
    dup = rm.bulk_create_or_update_devices(
        [ExportImportDevice(id=ids[1], import_mode="create", status="enabled")]
    )
    emit(
        "bulk_duplicate",
        is_successful=dup.is_successful,
        errors=[(e.device_id, e.error_code) for e in dup.errors or []],
    )

    for n, device in enumerate(ids):
        twin = rm.get_twin(device)
        patch = Twin(tags={"fleet": prefix, "odd": n % 2 == 1, "n": n})
        rm.update_twin(device, patch, twin.etag)

    rows, pages, kind = all_rows(rm, f"SELECT * FROM devices WHERE tags.fleet = '{prefix}'", 2)
    emit("query_all", ids=[r["deviceId"] for r in rows], pages=pages, type=kind)
    rows, _, kind = all_rows(
        rm,
        f"SELECT tags.odd AS odd, COUNT() AS n FROM devices WHERE tags.fleet = '{prefix}' "
        "GROUP BY tags.odd",
        100,
    )
    emit("query_group", rows=rows, type=kind)
    try:
        rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.n >"))
        emit("bad_query", status=200)
    except HttpOperationError as e:
        emit("bad_query", status=e.response.status_code, message=json.loads(e.response.text)["Message"])

    # A method job on the device azsim run serves.
    method = JobRequest(
        job_id="py-method",
        type="scheduleDeviceMethod",
        cloud_to_device_method=CloudToDeviceMethod(
            method_name="reboot",
            payload={"delay": 0},
            response_timeout_in_seconds=30,
            connect_timeout_in_seconds=30,
        ),
        query_condition=f"deviceId = '{ids[0]}'",
        start_time=datetime.datetime.now(datetime.timezone.utc),
        max_execution_time_in_seconds=120,
    )
    created = jm.create_scheduled_job("py-method", method)
    emit("method_created", status=created.status, type=created.type)
    done = wait_job(jm, "py-method")
    emit("method_done", status=done.status, **stats(done))
    rows, _, kind = all_rows(rm, "SELECT * FROM devices.jobs WHERE jobId = 'py-method'", 100)
    emit("method_rows", type=kind, rows=[
        {"device": r["deviceId"], "status": r["status"], "outcome": r.get("outcome")} for r in rows
    ])

    # A twin job on the odd devices.
    twin_job = JobRequest(
        job_id="py-twin",
        type="scheduleUpdateTwin",
        update_twin=Twin(etag="*", properties=TwinProperties(desired={"mode": "eco"})),
        query_condition=f"tags.fleet = '{prefix}' AND tags.odd = true",
        start_time=datetime.datetime.now(datetime.timezone.utc),
        max_execution_time_in_seconds=120,
    )
    jm.create_scheduled_job("py-twin", twin_job)
    done = wait_job(jm, "py-twin")
    emit("twin_done", status=done.status, **stats(done))
    modes = {d: rm.get_twin(d).properties.desired.get("mode") for d in ids}
    emit("twin_modes", modes=modes)

    # A job for later, cancelled; then the job list.
    later = JobRequest(
        job_id="py-later",
        type="scheduleUpdateTwin",
        update_twin=Twin(tags={"late": True}),
        query_condition=f"tags.fleet = '{prefix}'",
        start_time=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
        max_execution_time_in_seconds=60,
    )
    jm.create_scheduled_job("py-later", later)
    cancelled = jm.cancel_scheduled_job("py-later")
    emit("cancelled", status=cancelled.status)
    listed = jm.query_scheduled_jobs("scheduleUpdateTwin", None)
    emit("listed", ids=[j["jobId"] for j in listed.items], type=listed.type)
    return 0


if __name__ == "__main__":
    sys.exit(main())
