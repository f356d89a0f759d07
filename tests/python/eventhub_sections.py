"""Which AMQP sections an event of the hub's Event Hubs-compatible endpoint carries, as
azure-eventhub (the official Python Event Hubs SDK) decodes them.

Run by tests/it/python_e2e_suite.rs; prints JSON lines (key "event"), never a key.

    eventhub_sections.py EH_DEV_CS_FILE COUNT

Reads every partition from the start ("-1") over the development-mode connection string
(plain AMQP) until COUNT events arrived, and prints one "received" line per event: its body,
whether it has a properties section, and that section's content-type and message-id. The
official SDK's e2e helper (azure-iot-sdk-python dev_utils/service_helper_sync.py) reads
`event.message.properties.content_type.decode()` whenever the section is there.
"""

import json
import sys
import threading

from azure.eventhub import EventHubConsumerClient
from azure.eventhub._pyamqp import _platform as _pyamqp_platform

# As in eventhub_sdk.py: pyamqp 5.15.1 writes TCP_MAXSEG back, which Linux refuses above 32767
# on loopback (removed upstream in Azure/azure-sdk-for-python#45418, not released here).
_pyamqp_platform.KNOWN_TCP_OPTS.discard("TCP_MAXSEG")

TIMEOUT_S = 60


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def text(v):
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cs = f.read().strip()
    count = int(sys.argv[2])
    got = []
    done = threading.Event()
    lock = threading.Lock()

    def on_event(_ctx, ev):
        if ev is None:
            return
        with lock:
            got.append(ev)
            if len(got) >= count:
                done.set()

    client = EventHubConsumerClient.from_connection_string(cs, consumer_group="$Default")
    t = threading.Thread(
        target=client.receive,
        kwargs=dict(on_event=on_event, starting_position="-1", max_wait_time=1),
        daemon=True,
    )
    t.start()
    ok = done.wait(TIMEOUT_S)
    client.close()
    t.join(10)
    if not ok:
        emit("timeout", what=f"{count} events", got=len(got))
        return 1
    for ev in got[:count]:
        props = ev.message.properties
        emit(
            "received",
            body=ev.body_as_str(),
            has_properties=props is not None,
            content_type=text(props.content_type) if props is not None else None,
            message_id=text(props.message_id) if props is not None else None,
        )
    emit("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the test reads the failure from the JSON line
        emit("error", error=repr(e)[:500])
        raise
