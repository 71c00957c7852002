"""The demo's closing table."""

from __future__ import annotations

from rich.table import Table

from .report import percentile
from .runner import DemoResult


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def summary_table(result: DemoResult) -> Table:
    """Counts, Genesys calls, latency and truthfulness of one demo run."""
    c = result.counters
    decisions: dict[str, int] = c["decisions"]
    calls: dict[str, int] = c["calls"]
    acc = result.accuracy
    table = Table(title="typing-processor demo", show_lines=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("events in", f"{c['events']:,}"),
        ("suppressed (no call)", f"{decisions.get('suppressed', 0):,}"),
        ("stale (never set)", f"{decisions.get('stale', 0):,}"),
        ("duplicates dropped", f"{decisions.get('duplicate', 0):,}"),
        ("dead letters", f"{c['dead_letters']:,}"),
        (
            "PATCH set / refresh / clear (work)",
            " / ".join(f"{calls.get(kind, 0):,}" for kind in ("set", "refresh", "clear")),
        ),
        ("Genesys PATCH (HTTP)", f"{result.calls('PATCH'):,}"),
        ("Genesys GET (HTTP)", f"{result.calls('GET'):,}"),
        ("412 conflicts", f"{result.status_count(412):,}"),
        ("429 rate limited", f"{result.status_count(429):,}"),
        ("5xx answers", f"{sum(result.status_count(s) for s in (500, 502, 503, 504)):,}"),
        ("CRM-sync records", f"{c['crm_records']:,}"),
        ("audit records", f"{c['audit_records']:,}"),
        ("changelog records", f"{c['changelog_records']:,}"),
        (
            "set latency p50 / p99",
            f"{_ms(percentile(acc.set_latencies_ms, 50))} / "
            f"{_ms(percentile(acc.set_latencies_ms, 99))}",
        ),
        (
            "clear lag p50 / p99",
            f"{_ms(percentile(acc.clear_latencies_ms, 50))} / "
            f"{_ms(percentile(acc.clear_latencies_ms, 99))}",
        ),
        ("typing time (truth)", f"{acc.truth_ms / 1000:,.1f} s"),
        ("phantom typing time", _share(acc.phantom_ms, acc.truth_ms)),
        ("missed typing time", _share(acc.missed_ms, acc.truth_ms)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _share(part_ms: int, whole_ms: int) -> str:
    share = 100 * part_ms / whole_ms if whole_ms else 0.0
    return f"{part_ms / 1000:,.2f} s ({share:.2f}%)"
