"""The demo's closing table.

The budget bound is the most typing any scheduler could have shown with the Genesys calls
this run made: each shown burst costs at least two calls (a set and its clear; one for a
messaging target), plus one GET for each webchat session a scheduler shows (charged to
the session's longest burst, whichever sessions the run happened to show), so no scheduler
shows more than the longest bursts that many calls pay for. Fidelity = typing shown / that bound.

The bound pays no refresh, which I2 requires while typing outlasts what one call shows; the
ceiling is the same bound with each burst at the calls it needs to stay shown (even for a
scheduler that knew the future), as a share of the bound: the most fidelity reachable.
Typing shown as a share of that ceiling says how close the run came to it.

A run that made no call (or had no typing) has a bound of 0: its fidelity is not
measurable, and the table says so ("n/a") rather than show a perfect score.
"""

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
        ("Genesys typing calls (messaging)", f"{result.typing_calls():,}"),
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
    if set(result.by_kind) != {"webchat"}:
        for kind, part in result.by_kind.items():
            rows.append((f"phantom typing time ({kind})", _share(part.phantom_ms, part.truth_ms)))
            rows.append((f"missed typing time ({kind})", _share(part.missed_ms, part.truth_ms)))
    rows += [
        ("Genesys calls used / budget", _used(result.api_calls, result.budget_calls)),
        ("budget bound (typing showable)", f"{result.bound_ms / 1000:,.1f} s"),
        ("fidelity (shown / bound)", fidelity_text(result.fidelity, result)),
        (
            "fidelity ceiling under I2 (refreshes paid)",
            fidelity_text(result.ceiling_fidelity, result),
        ),
        ("fidelity under I2 (shown / ceiling)", fidelity_text(result.fidelity_of_ceiling, result)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def fidelity_text(value: float | None, result: DemoResult) -> str:
    """A fidelity as the table shows it; not measurable when the bound is 0."""
    if value is not None:
        return f"{value:.2f}"
    if result.api_calls == 0:
        return "n/a (no calls)"
    return "n/a (no typing)"


def _used(calls: int, budget: float) -> str:
    share = calls / budget if budget else 0.0
    return f"{calls:,} / {budget:,.0f} ({share:.0%})"


def _share(part_ms: int, whole_ms: int) -> str:
    share = 100 * part_ms / whole_ms if whole_ms else 0.0
    return f"{part_ms / 1000:,.2f} s ({share:.2f}%)"
