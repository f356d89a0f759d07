"""Reads an azsim hub's Event Hubs-compatible endpoint with azure-eventhub (the official
Python Event Hubs SDK), the telemetry sent by azure-iot-device (the official device SDK).

Run by tests/it/hub_amqp/eventhub_python.rs; prints JSON lines (key "event"), never a key.

    eventhub_sdk.py EH_CS_FILE EH_DEV_CS_FILE DEVICE_CS_FILE CA_FILE

1. the device sends two messages (properties, system properties) before any consumer runs;
2. EventHubConsumerClient from the printed connection string (AMQPS, the hub's CA):
   get_partition_ids, get_partition_properties of the device's partition;
3. a receive from the start ("-1") gets both messages, as IoT Hub routes them (printed);
4. a receive after the first message's sequence number gets only the second;
5. a receive from "@latest" gets only messages the device sends after it started (live tail);
6. the development-mode connection string (UseDevelopmentEmulator=true, plain AMQP) reads
   the same first message.
"""

import json
import sys
import threading
import time

from azure.eventhub import EventHubConsumerClient
from azure.eventhub._pyamqp import _platform as _pyamqp_platform

# azure-eventhub 5.15.1's pyamqp reads every known TCP option after connecting and writes it back;
# Linux refuses TCP_MAXSEG above 32767 with EINVAL, and a loopback MSS can be larger, so the
# connect fails now and then ("[Errno 22] Invalid argument", then a ~30 s retry). Upstream removed
# that read-back (Azure/azure-sdk-for-python#45418, not in a release on PyPI here); do the same.
_pyamqp_platform.KNOWN_TCP_OPTS.discard("TCP_MAXSEG")
from azure.iot.device import IoTHubDeviceClient, Message

TIMEOUT_S = 60


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, dict):
        return {text(k): text(x) for k, x in v.items()}
    return v


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def send(device, n, extra=None):
    msg = Message(json.dumps({"n": n}))
    msg.message_id = f"eh-msg-{n}"
    msg.correlation_id = f"eh-corr-{n}"
    msg.user_id = "eh-user"
    msg.content_type = "application/json"
    msg.content_encoding = "utf-8"
    msg.custom_properties["n"] = str(n)
    msg.custom_properties["source"] = "python sdk"
    for k, v in (extra or {}).items():
        msg.custom_properties[k] = v
    device.send_message(msg)
    emit("sent", n=n)


def receive(client, partition, position, inclusive, count, on_started=None):
    """The first `count` events of `partition` from `position` (closes the client)."""
    got = []
    done = threading.Event()

    def on_event(_ctx, ev):
        if ev is None:
            return
        got.append(ev)
        if len(got) >= count:
            done.set()

    def on_init(_ctx):
        if on_started:
            threading.Thread(target=on_started, daemon=True).start()

    t = threading.Thread(
        target=client.receive,
        kwargs=dict(
            on_event=on_event,
            on_partition_initialize=on_init,
            partition_id=partition,
            starting_position=position,
            starting_position_inclusive=inclusive,
            max_wait_time=1,
        ),
        daemon=True,
    )
    t.start()
    ok = done.wait(TIMEOUT_S)
    client.close()
    t.join(10)
    if not ok:
        emit("timeout", what=f"{count} events from {position!r}", got=len(got))
        sys.exit(1)
    return got[:count]


def describe(ev):
    sp = text(ev.system_properties)
    return {
        "body": ev.body_as_str(),
        "properties": text(ev.properties),
        "system": {k: (v if not isinstance(v, (bytes, bytearray)) else v.decode()) for k, v in sp.items()},
        "sequence_number": ev.sequence_number,
        "offset": ev.offset,
        "enqueued_time": ev.enqueued_time.isoformat() if ev.enqueued_time else None,
    }


def main():
    eh_cs, eh_dev_cs, device_cs, ca = (read(sys.argv[1]), read(sys.argv[2]), read(sys.argv[3]), sys.argv[4])
    with open(ca, encoding="utf-8") as f:
        ca_pem = f.read()
    device = IoTHubDeviceClient.create_from_connection_string(
        device_cs, server_verification_cert=ca_pem, connection_retry=False
    )
    device.connect()
    send(device, 1)
    send(device, 2)

    def consumer():
        return EventHubConsumerClient.from_connection_string(
            eh_cs, consumer_group="$Default", connection_verify=ca
        )

    c = consumer()
    ids = c.get_partition_ids()
    emit("partition_ids", ids=ids)
    props = {p: c.get_partition_properties(p) for p in ids}
    c.close()
    busy = [p for p in ids if not props[p]["is_empty"]]
    emit("partitions", props={p: {k: str(v) for k, v in props[p].items()} for p in ids}, busy=busy)
    part = busy[0]

    first = receive(consumer(), part, "-1", False, 2)
    emit("from_start", events=[describe(e) for e in first])

    after = receive(consumer(), part, first[0].sequence_number, False, 1)
    emit("after_first", events=[describe(e) for e in after])

    # The device keeps sending (3, 4, ...) until the "@latest" receiver has one: what it gets
    # must be one of those, never 1 or 2.
    stop = threading.Event()

    def keep_sending():
        n = 3
        while not stop.is_set():
            send(device, n)
            n += 1
            stop.wait(1)

    later = receive(consumer(), part, "@latest", False, 1, on_started=keep_sending)
    stop.set()
    emit("latest", events=[describe(e) for e in later])

    dev = EventHubConsumerClient.from_connection_string(eh_dev_cs, consumer_group="$Default")
    dev_got = receive(dev, part, "-1", False, 1)
    emit("dev_mode", events=[describe(e) for e in dev_got])

    device.shutdown()
    emit("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the test reads the failure from the JSON line
        emit("error", error=repr(e)[:500])
        raise
