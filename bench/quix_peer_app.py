"""The per-event work of the processor, as a Quix Streams 3.x application (the peer).

Parse each JSON event, keep per-session state in Quix's RocksDB store (with its changelog
topic), suppress a repeat of the wanted status within the 1500 ms window, and produce one
audit record per event; at-least-once with Quix's checkpointing. Run by
`bench/bench_peer.py` as a child process:

    python bench/quix_peer_app.py BROKER INPUT_TOPIC AUDIT_TOPIC GROUP STATE_DIR
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

from quixstreams import Application, State

WINDOW_MS = 1500


def decide(event: dict[str, Any], state: State) -> dict[str, Any]:
    """One event against its session's state: the audit record of the decision."""
    status = event.get("status")
    occurred = int(event.get("occurred_at", 0))
    wanted = state.get("status")
    window_at = state.get("window_at", -(10**15))
    latest = state.get("latest", -1)
    if occurred < latest:
        result = "stale"
    elif status == wanted and occurred - window_at < WINDOW_MS:
        result = "suppressed"
        state.set("latest", occurred)
    else:
        result = "applied"
        state.set("status", status)
        state.set("window_at", occurred)
        state.set("latest", occurred)
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "session_id": event.get("session_id"),
        "indicator_status": status,
        "result": result,
        "event_id": event.get("event_id"),
    }


def main() -> None:
    broker, input_topic, audit_topic, group, state_dir = sys.argv[1:6]
    app = Application(
        broker_address=broker,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        processing_guarantee="at-least-once",
        consumer_extra_config={"session.timeout.ms": 6000},
        loglevel="WARNING",
    )
    events = app.topic(input_topic, value_deserializer="json")
    audits = app.topic(audit_topic, value_serializer="json")
    sdf = app.dataframe(events)
    sdf = sdf.apply(decide, stateful=True)
    sdf.to_topic(audits)
    app.run()


if __name__ == "__main__":
    main()
