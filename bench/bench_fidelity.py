"""Fidelity under quota (DESIGN §4b): the demo stack at several loads against one budget.

For each load, the processor and then the tutorial's approach run on the same traffic (same
seed) against an emulator that allows exactly the budget, and the table shows: fidelity
(typing shown / the budget bound), its ceiling (what any scheduler that keeps I2, even one
that knew the future, could reach: the bound with each burst's refreshes paid) and the
typing shown as a share of that ceiling, phantom
and missed typing, clear lag and set latency (p50/p99), Genesys calls used / budget, and
429 answers.

    python bench/bench_fidelity.py                       # 40, 200, 500 sessions, 60 s, 300/min
    python bench/bench_fidelity.py --sessions 150 --duration 30 --no-tutorial
    python bench/bench_fidelity.py --sessions 200 --typists agents-long
    python bench/bench_fidelity.py --sessions 200 --service-burst 5   # a stricter service
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tutorial_baseline import tutorial_approach

from processor.demo.report import percentile
from processor.demo.runner import DemoOptions, DemoResult, SystemUnderTest, run_demo
from processor.demo.summary import fidelity_text
from processor.loadgen import TYPIST_MIXES
from processor.logs import configure_logging


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f} s"


def row(name: str, sessions: int, result: DemoResult) -> list[str]:
    acc = result.accuracy
    share = 100 / acc.truth_ms if acc.truth_ms else 0.0
    return [
        name,
        str(sessions),
        fidelity_text(result.fidelity, result),
        fidelity_text(result.ceiling_fidelity, result),
        fidelity_text(result.fidelity_of_ceiling, result),
        f"{acc.phantom_ms * share:.2f}%",
        f"{acc.missed_ms * share:.1f}%",
        f"{_ms(percentile(acc.clear_latencies_ms, 50))} / "
        f"{_ms(percentile(acc.clear_latencies_ms, 99))}",
        f"{_ms(percentile(acc.set_latencies_ms, 50))} / "
        f"{_ms(percentile(acc.set_latencies_ms, 99))}",
        f"{result.api_calls / result.budget_calls:.0%}" if result.budget_calls else "-",
        str(result.status_count(429)),
    ]


async def main(args: argparse.Namespace) -> None:
    console = Console(width=150)
    quiet = Console(quiet=True)
    table = Table(
        title=f"fidelity under quota: {args.rate}/min, {args.duration:.0f} s, seed {args.seed},"
        f" typists {args.typists}"
    )
    for column in (
        "system",
        "sessions",
        "fidelity",
        "ceiling",
        "of ceiling",
        "phantom",
        "missed",
        "clear lag p50 / p99",
        "set latency p50 / p99",
        "calls / budget",
        "429s",
    ):
        table.add_column(column, justify="left" if column == "system" else "right")
    systems: list[tuple[str, SystemUnderTest | None]] = [("processor", None)]
    if not args.no_tutorial:
        systems.append(("tutorial", tutorial_approach))
    for sessions in args.sessions:
        for name, system in systems:
            options = DemoOptions(
                sessions=sessions,
                duration_s=args.duration,
                seed=args.seed,
                api_rate_per_minute=args.rate,
                rate_limit_burst=args.service_burst,
                typists=args.typists,
                require_settled=system is None,  # the tutorial may leave indicators behind
            )
            console.print(f"running {name} with {sessions} sessions ...")
            if system is None:
                result = await run_demo(options, quiet)
            else:
                result = await run_demo(options, quiet, system)
            table.add_row(*row(name, sessions, result))
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sessions",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[40, 200, 500],
        help="comma-separated loads; default: 40,200,500",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds; default: 60")
    parser.add_argument("--rate", type=int, default=300, help="calls per minute; default: 300")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-tutorial", action="store_true", help="the processor only")
    parser.add_argument(
        "--service-burst",
        type=int,
        default=None,
        help="calls the emulator admits back to back (as `demo --rate-limit-burst`);"
        " default: a twelfth of the rate",
    )
    parser.add_argument(
        "--typists",
        choices=tuple(TYPIST_MIXES),
        default="uniform",
        help="how participants differ (as `typing-processor demo --typists`)",
    )
    configure_logging("ERROR")
    asyncio.run(main(parser.parse_args()))
