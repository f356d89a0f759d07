"""The consumer side of the Event Hubs-compatible endpoint bench
(crates/azsim-emulator/benches/eventhub.rs): one EventHubConsumerClient reading every
partition from the start, counting events until TOTAL have arrived.

    eventhub_bench.py EH_CS CA_FILE AMQPS_PORT TOTAL PARTITIONS

Prints {"event": "ready"} once it receives (the bench then starts the devices) and
{"event": "done", "events": N, "seconds": S, "first_to_last_s": F} at the end.
"""

import json
import sys
import threading
import time

from azure.eventhub import EventHubConsumerClient, TransportType
from azure.eventhub._pyamqp import _platform as _pyamqp_platform

# As in eventhub_sdk.py: pyamqp writes back a loopback TCP_MAXSEG Linux refuses (EINVAL), fixed
# upstream by Azure/azure-sdk-for-python#45418; drop that option.
_pyamqp_platform.KNOWN_TCP_OPTS.discard("TCP_MAXSEG")


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main():
    cs, ca, port, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    partitions = int(sys.argv[5])
    client = EventHubConsumerClient.from_connection_string(
        cs,
        consumer_group="$Default",
        connection_verify=ca,
        custom_endpoint_address=f"sb://localhost:{port}",
        transport_type=TransportType.Amqp,
    )
    lock = threading.Lock()
    state = {"n": 0, "first": None, "last": None, "started": set()}
    done = threading.Event()

    def on_init(ctx):
        with lock:
            state["started"].add(ctx.partition_id)
            if len(state["started"]) == partitions:
                emit("ready")

    def on_batch(_ctx, events):
        now = time.monotonic()
        with lock:
            if events and state["first"] is None:
                state["first"] = now
            state["n"] += len(events)
            if events:
                state["last"] = now
            if state["n"] >= total:
                done.set()

    t = threading.Thread(
        target=client.receive_batch,
        kwargs=dict(
            on_event_batch=on_batch,
            on_partition_initialize=on_init,
            starting_position="-1",
            max_batch_size=300,
            max_wait_time=1,
            prefetch=1000,
        ),
        daemon=True,
    )
    start = time.monotonic()
    t.start()
    ok = done.wait(600)
    client.close()
    with lock:
        first, last, n = state["first"], state["last"], state["n"]
    emit(
        "done" if ok else "timeout",
        events=n,
        seconds=round(time.monotonic() - start, 3),
        first_to_last_s=round((last - first), 3) if first and last else None,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
