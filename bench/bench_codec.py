"""Input decoding on one core: microseconds per valid event, by payload shape.

    python bench/bench_codec.py [--events 50000] [--repeats 5]

For each shape (minimal event; webchat event with timeout, participant and channel; an
`agent_typing` target; an `open_messaging` target) it times, in the same run:
- `decode_event`: the shipped path (orjson, then the model's compiled validator, then the
  key check);
- `model_validate`: orjson, `TypingEvent.model_validate`, key check (the former path);
- `model_construct only`: building the same objects with `model_construct` from values
  already known to be valid, with no check at all: a lower bound for any hand-written
  Python check of the rules that ends in `model_construct`.
It also times a dead letter for a bad status and for a 1 MiB oversize value (SHA-256 of
the whole value, 256 KiB kept). Best of `--repeats` runs. Target: <= 5 us per valid event.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from processor.codec import decode_event
from processor.models import (
    AgentTypingTarget,
    DeadLetter,
    OpenMessagingTarget,
    Participant,
    TypingEvent,
)

T0 = 1_700_000_000_000
CONV = "0f8fad5b-d9cb-469f-a165-70867728950e"
COMM = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TARGET_MODELS: dict[str, type[AgentTypingTarget | OpenMessagingTarget]] = {
    "agent_typing": AgentTypingTarget,
    "open_messaging": OpenMessagingTarget,
}


def minimal(i: int) -> dict[str, Any]:
    return {
        "event_id": f"evt-{i:08d}",
        "session_id": f"sess-{i % 5000:06d}",
        "status": "typing",
        "occurred_at": T0 + i,
    }


def webchat(i: int) -> dict[str, Any]:
    doc = minimal(i)
    doc.update(timeout_ms=5000, participant={"id": f"cust-{i}", "role": "customer"}, channel="web")
    return doc


def agent_typing(i: int) -> dict[str, Any]:
    doc = minimal(i)
    doc["target"] = {"kind": "agent_typing", "conversation_id": CONV, "communication_id": COMM}
    return doc


def open_messaging(i: int) -> dict[str, Any]:
    doc = minimal(i)
    doc["target"] = {
        "kind": "open_messaging",
        "integration_id": CONV,
        "from_id": f"+1555{i:07d}",
        "from_id_type": "Phone",
        "nickname": "Ann",
    }
    return doc


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "minimal": minimal,
    "webchat, all fields": webchat,
    "agent_typing target": agent_typing,
    "open_messaging target": open_messaging,
}


def best_us(run: Callable[[], object], count: int, repeats: int) -> float:
    """Best time per item over `repeats` runs, in microseconds."""
    gc.collect()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def records(shape: Callable[[int], dict[str, Any]], n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        doc = shape(i)
        out.append((doc["session_id"].encode(), orjson.dumps(doc)))
    return out


def constructed(doc: dict[str, Any]) -> TypingEvent:
    """The objects `decode_event` returns, built with `model_construct` and no checks."""
    values = dict(doc)
    participant = values.get("participant")
    if participant is not None:
        values["participant"] = Participant.model_construct(**participant)
    target = values.get("target")
    if target is not None:
        values["target"] = TARGET_MODELS[target["kind"]].model_construct(**target)
    return TypingEvent.model_construct(**values)


def bench_shape(shape: Callable[[int], dict[str, Any]], n: int, repeats: int) -> dict[str, float]:
    recs = records(shape, n)
    docs = [orjson.loads(value) for _, value in recs]
    for key, value in recs[:100]:
        event = decode_event(key, value, topic="in", partition=0, offset=0, now_ms=T0)
        assert isinstance(event, TypingEvent), event
        assert event == TypingEvent.model_validate(orjson.loads(value))

    def shipped() -> None:
        for key, value in recs:
            decode_event(key, value, topic="in", partition=0, offset=0, now_ms=T0)

    def former() -> None:
        loads, validate = orjson.loads, TypingEvent.model_validate
        for key, value in recs:
            event = validate(loads(value))
            if key != event.session_id.encode():
                raise AssertionError("key mismatch")

    def construct_only() -> None:
        for doc in docs:
            constructed(doc)

    def parse_only() -> None:
        loads = orjson.loads
        for _, value in recs:
            loads(value)

    return {
        "decode_event_us": best_us(shipped, n, repeats),
        "model_validate_us": best_us(former, n, repeats),
        "model_construct_only_us": best_us(construct_only, n, repeats),
        "orjson_loads_us": best_us(parse_only, n, repeats),
    }


def bench_dead_letters(n: int, repeats: int) -> dict[str, float]:
    bad = minimal(0) | {"status": "dancing"}
    bad_value = orjson.dumps(bad)
    huge = b'{"event_id":"' + b"x" * (1024 * 1024) + b'"}'

    def bad_status() -> None:
        for _ in range(n):
            letter = decode_event(b"k", bad_value, topic="in", partition=0, offset=0, now_ms=T0)
            assert isinstance(letter, DeadLetter)

    def oversize() -> None:
        for _ in range(100):
            decode_event(b"k", huge, topic="in", partition=0, offset=0, now_ms=T0).to_bytes()

    return {
        "dead_letter_bad_status_us": best_us(bad_status, n, repeats),
        "dead_letter_1mib_oversize_us": best_us(oversize, 100, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    results: dict[str, Any] = {"python": sys.version.split()[0]}
    print(
        f"{'shape':<24}{'decode_event':>14}{'model_validate':>16}{'ratio':>8}"
        f"{'construct only':>16}{'orjson':>9}   (us per valid event)"
    )
    for name, shape in SHAPES.items():
        r = bench_shape(shape, args.events, args.repeats)
        ratio = r["model_validate_us"] / r["decode_event_us"]
        results[name] = {k: round(v, 3) for k, v in r.items()} | {"speedup": round(ratio, 2)}
        print(
            f"{name:<24}{r['decode_event_us']:>14.2f}{r['model_validate_us']:>16.2f}"
            f"{ratio:>7.2f}x{r['model_construct_only_us']:>16.2f}{r['orjson_loads_us']:>9.2f}"
        )
    letters = bench_dead_letters(args.events // 10, args.repeats)
    results.update({k: round(v, 2) for k, v in letters.items()})
    print(f"dead letter, bad status     {letters['dead_letter_bad_status_us']:>10.2f} us")
    print(f"dead letter, 1 MiB value    {letters['dead_letter_1mib_oversize_us']:>10.2f} us")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
