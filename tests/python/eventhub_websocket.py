"""Reads an azsim hub's Event Hubs-compatible endpoint with azure-eventhub (the official Python
Event Hubs SDK) over AMQP over WebSockets (`TransportType.AmqpOverWebsocket`: pyAMQP's
WebSocketTransport, `wss://{host}:{port}/$servicebus/websocket`, subprotocol AMQPWSB10).

Run by tests/it/hub_amqp_websocket.rs; prints JSON lines (key "event"), never a key.

    eventhub_websocket.py EH_CS_FILE WSS_ENDPOINT CA_FILE GROUP

The SDK dials 443 unless `custom_endpoint_address` names another port; WSS_ENDPOINT is
`sb://localhost:{https port}`. The test has sent telemetry 1 and 2 from one device before. With
env AZSIM_EH_DEBUG set (by hand, for debugging), pyAMQP logs its frames to stderr (payloads, the
CBS token among them, elided), which the test shows when it fails.

1. get_partition_ids, get_partition_properties (the `$management` node over WebSockets);
2. a receive from the start ("-1") gets both messages (printed);
3. a receive after the first message's sequence number, in consumer group GROUP, gets the second;
4. a receive from "@latest": "latest_started" when it starts; the test then sends 3, 4, ... until
   it has one, which must be one of those, never 1 or 2.
"""

import json
import logging
import os
import sys
import threading

from azure.eventhub import EventHubConsumerClient, TransportType

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


def receive(client, partition, position, count, on_started=None):
    """The first `count` events of `partition` after `position` (closes the client)."""
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
            on_started()

    t = threading.Thread(
        target=client.receive,
        kwargs=dict(
            on_event=on_event,
            on_partition_initialize=on_init,
            partition_id=partition,
            starting_position=position,
            starting_position_inclusive=False,
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
    return {
        "body": ev.body_as_str(),
        "properties": text(ev.properties),
        "device": text(ev.system_properties.get(b"iothub-connection-device-id")),
        "sequence_number": ev.sequence_number,
        "offset": ev.offset,
    }


def main():
    if os.environ.get("AZSIM_EH_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    eh_cs, endpoint, ca, group = read(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

    def consumer(group="$Default"):
        return EventHubConsumerClient.from_connection_string(
            eh_cs,
            consumer_group=group,
            connection_verify=ca,
            transport_type=TransportType.AmqpOverWebsocket,
            custom_endpoint_address=endpoint,
            retry_total=0,
            logging_enable=bool(os.environ.get("AZSIM_EH_DEBUG")),
        )

    c = consumer()
    ids = c.get_partition_ids()
    props = {p: c.get_partition_properties(p) for p in ids}
    c.close()
    busy = [p for p in ids if not props[p]["is_empty"]]
    emit("partitions", ids=ids, busy=busy, props={p: {k: str(v) for k, v in props[p].items()} for p in ids})
    part = busy[0]

    first = receive(consumer(), part, "-1", 2)
    emit("from_start", events=[describe(e) for e in first])

    after = receive(consumer(group), part, first[0].sequence_number, 1)
    emit("after_first", group=group, events=[describe(e) for e in after])

    later = receive(consumer(), part, "@latest", 1, on_started=lambda: emit("latest_started"))
    emit("latest", events=[describe(e) for e in later])
    emit("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the test reads the failure from the JSON line
        emit("error", error=repr(e)[:500])
        raise
