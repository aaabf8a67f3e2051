"""What a benchmark run prints and plots: the table of a sweep, the table of a sweep over
catalog sizes, and a throughput / p99 plot (PNG) against the echo baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tools.load import MAX_FALLBACK_SHARE, invalid_because


def _ms(value: float | None, width: int = 8) -> str:
    return f"{'?':>{width}}" if value is None else f"{value:>{width}.2f}"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.items())


def level_problem(level: Mapping[str, Any]) -> str:
    """Why a level is not a valid figure ("" when it is); computed again for result files
    written before the bench judged validity."""
    if "invalid_because" in level:
        return str(level["invalid_because"])
    return invalid_because(level["decide"], level.get("echo"))


def ratio_cell(level: Mapping[str, Any]) -> str:
    """decide/echo, or "n/a (why)" when the level is not a valid figure."""
    problem = level_problem(level)
    return f"n/a ({problem})" if problem else f"{level['ratio']:.2f}"


def format_decision_log(log: Mapping[str, Any] | None) -> str:
    if not log or not log.get("rows"):
        return "decision log: no decision recorded (or the database could not be read)"
    stored = log.get("stored_bytes_per_row")
    return (
        f"decision log ({log['table']}): {log['rows']:,} rows,"
        f" {log['bytes_per_row']:,.0f} bytes per row ({log['method']})"
        + (f", {stored:,.0f} bytes stored per row ({log['stored_method']})" if stored else "")
    )


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary of a `sweep` (or `run_scenario`) result."""
    machine = result.get("machine", {})
    settings = result.get("settings", {})
    header = (
        f"{'conc':>5} | {'decide rps':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'err':>5}"
        f" {'degr':>5} {'CPU ms':>8} | {'echo rps':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU ms':>8} | ratio"
    )
    scenario = result.get("scenario")
    lines = [] if not scenario else [describe_scenario(scenario)]
    lines += [
        f"target {result.get('target', '?')}: {machine.get('cpu_count', '?')} CPUs, "
        f"{machine.get('platform', '?')}, python {machine.get('python', '?')}",
        f"{settings.get('duration_s', '?')} s per level after {settings.get('warmup_s', '?')} s"
        f" warm-up; echo baseline with {settings.get('baseline_hops', '?')} hop(s);"
        " load generator on the same host",
        "CPU ms: user + system CPU per call completed in the window, of all server processes"
        " together (with a local PostgreSQL's backends) for decide, of the echo processes for"
        " echo",
        header,
        "-" * len(header),
    ]
    levels = result.get("levels", [])
    for level in levels:
        d, e = level["decide"], level["echo"]
        lines.append(
            f"{level['concurrency']:>5} | {d['rps']:>10.1f} {d['p50_ms']:>8.2f} "
            f"{d['p95_ms']:>8.2f} {d['p99_ms']:>8.2f} {d['errors']:>5} {d.get('degraded', 0):>5}"
            f" {_ms(d.get('cpu_ms_per_call'))}"
            f" | {e['rps']:>10.1f} {e['p50_ms']:>8.2f} {e['p99_ms']:>8.2f}"
            f" {_ms(e.get('cpu_ms_per_call'))} | {ratio_cell(level)}"
        )
    if any(level_problem(level) for level in levels):
        share = 100 * settings.get("max_fallback_share", MAX_FALLBACK_SHARE)
        lines.append(
            f"n/a: more than {share:g}% of the calls were degraded or failed; that level is"
            " not a figure (fallbacks and failures cost less than decisions)"
        )
    for level in levels:
        conc, d = level["concurrency"], level["decide"]
        if d.get("degraded_reasons"):
            lines.append(f"degraded at conc {conc}: {_counts(d['degraded_reasons'])}")
        for key in ("decide", "echo"):
            if level[key].get("error_codes"):
                lines.append(f"{key} errors at conc {conc}: {_counts(level[key]['error_codes'])}")
        by_process = d.get("cpu_ms_per_call_by_process") or {}
        if len(by_process) > 1:
            lines.append(
                f"server CPU ms per Decide at conc {conc}: "
                + ", ".join(f"{name} {_ms(ms, 0)}" for name, ms in by_process.items())
            )
    if levels and not any(level["decide"].get("cpu_ms_per_call_by_process") for level in levels):
        lines.append("server CPU: unknown (the bench did not start the servers)")
    if "decision_log" in result:
        lines.append(format_decision_log(result["decision_log"]))
    for level in levels:
        rss = level.get("peak_rss_mb") or {}
        if rss:
            lines.append(
                f"peak RSS MiB after conc {level['concurrency']}: "
                + ", ".join(f"{name} {mb:.0f}" for name, mb in rss.items() if mb)
            )
    return "\n".join(lines)


def describe_scenario(scenario: dict[str, Any]) -> str:
    actions = scenario.get("actions") or "demo (6)"
    data = scenario.get("data", "empty")
    if data == "large":
        data = f"large ({scenario.get('data_profiles', 0):,} profiles)"
    workers = scenario.get("workers", 1)
    return (
        f"shape {scenario.get('shape')}{f' x{workers} workers' if workers > 1 else ''}, "
        f"{scenario.get('database')}, actions {actions}, data {data}"
    )


def format_actions_table(sweep_result: Mapping[str, Any]) -> str:
    """One row per catalog size: at each concurrency decide rps, p50, p99, decide/echo and
    the servers' CPU ms per Decide; then the decision log's bytes per row."""
    runs = sweep_result["runs"]
    if not runs:
        return "no run"
    concurrencies = [level["concurrency"] for level in runs[0]["levels"]]
    first = f"{'actions':>7}"
    second = f"{'':>7}"
    for concurrency in concurrencies:
        label = f"concurrency {concurrency}"
        first += f" | {label:<42}"
        second += f" | {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} {'CPU ms':>8}"
    first += " | decision log"
    second += " | bytes/row"
    sizes = ",".join(str(run["scenario"]["actions"]) for run in runs)
    described = describe_scenario({**runs[0]["scenario"], "actions": sizes})
    lines = [described, first, second, "-" * len(second)]
    notes: list[str] = []
    for run in runs:
        actions = run["scenario"]["actions"]
        row = f"{actions:>7}"
        for level in run["levels"]:
            d = level["decide"]
            problem = level_problem(level)
            if problem:
                notes.append(f"{actions} actions, concurrency {level['concurrency']}: {problem}")
                row += f" | {'n/a':>8}"
            else:
                row += f" | {d['rps']:>8.1f}"
            row += (
                f" {d['p50_ms']:>8.2f} {d['p99_ms']:>8.2f}"
                f" {'n/a' if problem else format(level['ratio'], '.2f'):>6}"
                f" {_ms(d.get('cpu_ms_per_call'))}"
            )
        per_row = run.get("decision_log_bytes_per_row")
        row += f" | {'?' if per_row is None else format(per_row, ',.0f'):>9}"
        lines.append(row)
    lines.append(
        "CPU ms: user + system CPU of all server processes per Decide; ratio: decide/echo"
        " rps, each size with its own echo baseline in the same run"
    )
    lines += [f"n/a, not a figure: {note}" for note in notes]
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], path: str) -> None:
    """Throughput and p99 against concurrency, Decide (solid) vs its echo baseline
    (dashed), one colour per result; written as a PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rps_axis, p99_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, result in enumerate(results):
        colour = colours[index % len(colours)]
        label = describe_scenario(result["scenario"]) if "scenario" in result else "decide"
        levels = result["levels"]
        conc = [level["concurrency"] for level in levels]
        hops = result.get("settings", {}).get("baseline_hops", 0)
        for axis, key in ((rps_axis, "rps"), (p99_axis, "p99_ms")):
            axis.plot(conc, [lv["decide"][key] for lv in levels], "o-", color=colour, label=label)
            axis.plot(
                conc,
                [lv["echo"][key] for lv in levels],
                "s--",
                color=colour,
                alpha=0.6,
                label=f"echo, {hops} hop(s)",
            )
    for axis, title in ((rps_axis, "throughput (requests/s)"), (p99_axis, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    rps_axis.legend(fontsize=7, loc="best")
    figure.suptitle("nextbest Decide vs bare gRPC echo (solid: Decide, dashed: echo)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
