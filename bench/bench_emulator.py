"""Sustained conditional PATCH/s of the Genesys emulator (rate limiting off).

Starts `python -m processor emulator` on a free loopback port (one process, one event
loop: one core), then drives it for a bounded time and number of requests with a small
keep-alive HTTP/1.1 client written on asyncio streams (an off-the-shelf Python client
would be the bottleneck, not the server). Each connection owns its own sessions and
chains the ETag of every response into the next `If-Match`, so every PATCH is a real,
accepted, conditional write.

    python bench/bench_emulator.py [--duration 5] [--connections 16] [--max-requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson

from processor.emulator.testing import EmulatorProcess

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"


@dataclass
class Totals:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _connection(
    host: str,
    port: int,
    token: str,
    sessions: list[tuple[str, str]],
    deadline: float,
    budget: list[int],
    totals: Totals,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    etags = dict(sessions)
    ids = list(etags)
    version = 0
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            session_id = ids[version % len(ids)]
            version += 1
            now_ms = time.time_ns() // 1_000_000
            indicator = (
                {
                    "status": "typing",
                    "originatedAt": now_ms,
                    "expiresAt": now_ms + 5000,
                    "version": version,
                }
                if version % 2
                else None
            )
            body = orjson.dumps({"customAttributes": {"typingIndicator": indicator}})
            request = (
                f"PATCH /api/v2/webchat/sessions/{session_id} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\n"
                f"If-Match: {etags[session_id]}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            status, headers, _ = await _read_response(reader)
            totals.latencies_ms.append((time.perf_counter() - started) * 1000)
            totals.statuses[status] += 1
            totals.sent += 1
            if status == 200:
                etags[session_id] = headers["etag"]
    finally:
        writer.close()
        await writer.wait_closed()


def _cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU time of `pid` (Linux /proc), to show how busy the server was."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _drive(
    args: argparse.Namespace, base_url: str, host: str, port: int, pid: int | None
) -> Totals:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as admin:
        response = await admin.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        response.raise_for_status()
        token = response.json()["access_token"]
        per_connection: list[list[tuple[str, str]]] = [[] for _ in range(args.connections)]
        for index in range(args.connections * args.sessions_per_connection):
            session_id = f"bench-{index}"
            created = await admin.post("/emulator/sessions", json={"session_id": session_id})
            created.raise_for_status()
            per_connection[index % args.connections].append((session_id, created.json()["etag"]))

    totals = Totals()
    budget = [args.max_requests]
    # warm-up is not measured: let imports, caches and the allocator settle
    warm_deadline = time.perf_counter() + args.warmup
    warm = Totals()
    await asyncio.gather(
        *(
            _connection(host, port, token, sessions, warm_deadline, [10**9], warm)
            for sessions in per_connection
        )
    )
    # the warm-up moved the ETags on: fetch the current ones
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as admin:
        for sessions in per_connection:
            for i, (session_id, _) in enumerate(sessions):
                current = await admin.get(f"/emulator/sessions/{session_id}")
                sessions[i] = (session_id, current.json()["etag"])

    cpu_before = _cpu_seconds(pid)
    started = time.perf_counter()
    deadline = started + args.duration
    await asyncio.gather(
        *(
            _connection(host, port, token, sessions, deadline, budget, totals)
            for sessions in per_connection
        )
    )
    elapsed = time.perf_counter() - started
    cpu_after = _cpu_seconds(pid)
    _report(totals, elapsed)
    if cpu_before is not None and cpu_after is not None:
        print(f"server CPU:   {100 * (cpu_after - cpu_before) / elapsed:.0f}% of one core")
    return totals


def _report(totals: Totals, elapsed: float) -> None:
    latencies = sorted(totals.latencies_ms) or [0.0]
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    ok = totals.statuses.get(200, 0)
    print(f"requests:     {totals.sent} in {elapsed:.2f} s")
    print(f"statuses:     {dict(sorted(totals.statuses.items()))}")
    print(f"PATCH/s:      {totals.sent / elapsed:,.0f} (accepted 200: {ok / elapsed:,.0f}/s)")
    print(f"latency ms:   p50 {p50:.2f}  p99 {p99:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds (max 60)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--sessions-per-connection", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=200_000, help="hard cap")
    args = parser.parse_args(argv)
    args.duration = min(max(args.duration, 0.5), 60.0)

    process = EmulatorProcess(
        CLIENT_ID,
        CLIENT_SECRET,
        extra_args=("--rate-limit-per-minute", "0"),
    )
    with process:
        print(f"emulator:     {process.base_url} (pid {process.pid}), rate limiting off")
        print(
            f"load:         {args.connections} connections x "
            f"{args.sessions_per_connection} sessions, {args.duration:.1f} s"
        )
        totals = asyncio.run(
            _drive(args, process.base_url, process.host, process.port, process.pid)
        )
        with httpx.Client(base_url=process.base_url) as admin:
            served = admin.get("/emulator/stats").json()["by_route"]
        patch_200 = served.get("PATCH /api/v2/webchat/sessions/{sessionId}", {}).get("200", 0)
        print(f"server saw:   {patch_200} accepted PATCHes (warm-up included)")
    failed = sum(count for status, count in totals.statuses.items() if status != 200)
    return 1 if failed or totals.sent == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
