"""N official Python SDK devices (azure-iot-device, asyncio) sending QoS 1 telemetry: the SDK
phase of src/bin/azsim-bench-fleet.rs. Not a test.

    python_devices.py CS_FILE CA_FILE INTERVAL_S WARMUP_S SECONDS

CS_FILE holds one device connection string a line (a file, so keys stay out of process
listings). Every device connects (IoTHubDeviceClient from azure.iot.device.aio), then sends a
message every INTERVAL_S (the same JSON body as the bench's azsim fleet), one at a time, each
awaited until its PUBACK. Once every device is connected and WARMUP_S have passed it prints
{"event":"start","acked":A} and after SECONDS more {"event":"end","acked":B,"sent":S,"errors":E,
"devices":N}; the bench reads this process's CPU at both lines. The SDK dials port 8883.
"""

import asyncio
import json
import random
import sys
import time

from azure.iot.device import Message
from azure.iot.device.aio import IoTHubDeviceClient


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


class Counts:
    sent = 0
    acked = 0
    errors = 0


async def device(cs, ca, interval, stop, counts, connected):
    client = IoTHubDeviceClient.create_from_connection_string(
        cs, server_verification_cert=ca, connection_retry=False
    )
    device_id = cs.split("DeviceId=")[1].split(";")[0]
    await client.connect()
    connected.append(device_id)
    seq = 0
    # Spread the first sends over one interval, as azsim fleet's jitter does.
    await asyncio.sleep(random.uniform(0, interval))
    next_at = time.monotonic()
    while not stop.is_set():
        body = {
            "device_id": device_id,
            "temperature": round(20 + random.uniform(-5, 5), 2),
            "humidity": round(50 + random.uniform(-10, 10), 2),
            "seq": seq,
        }
        msg = Message(json.dumps(body))
        msg.content_type = "application/json"
        msg.content_encoding = "utf-8"
        counts.sent += 1
        try:
            await client.send_message(msg)
            counts.acked += 1
        except Exception:  # noqa: BLE001 - counted; the bench reports it
            counts.errors += 1
        seq += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = time.monotonic()
    await client.shutdown()


async def main():
    cs_file, ca_file, interval, warmup, seconds = sys.argv[1:6]
    interval, warmup, seconds = float(interval), float(warmup), float(seconds)
    with open(cs_file, encoding="utf-8") as f:
        strings = [line.strip() for line in f if line.strip()]
    with open(ca_file, encoding="utf-8") as f:
        ca = f.read()
    stop = asyncio.Event()
    counts = Counts()
    connected = []
    tasks = [
        asyncio.create_task(device(cs, ca, interval, stop, counts, connected)) for cs in strings
    ]
    while len(connected) < len(strings):
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            emit("error", error=type(failed[0].exception()).__name__)
            sys.exit(1)
        await asyncio.sleep(0.1)
    await asyncio.sleep(warmup)
    emit("start", acked=counts.acked)
    await asyncio.sleep(seconds)
    emit(
        "end",
        acked=counts.acked,
        sent=counts.sent,
        errors=counts.errors,
        devices=len(connected),
    )
    stop.set()
    await asyncio.wait(tasks, timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
