"""RESULTS.md from one run's figures: every ratio next to its target."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

FINDINGS = Path(__file__).with_name("FINDINGS.md")
SOAK = Path(__file__).with_name("SOAK.md")  # bench/soak --record keeps its runs there
RESULTS = Path(__file__).with_name("RESULTS.md")
SOAK_HEADING = "## Chaos soak (bench/soak)"
SOAK_INTRO = f"""{SOAK_HEADING}

Receivers and workers SIGKILLed (and a worker sometimes SIGTERMed) and restarted, Redis and
PostgreSQL crashed or stopped and restarted, 1ClickImpact (by default the emulator's strict
profile: listings 3 s late, without metadata, e-mails lower-cased) failing at random and by injected
faults; then everything let settle, failed events replayed, and three counts compared: the
captures the deliveries plan (computed by the soak from its rules), the impacts standing at
the emulator (mapped to ledger rows by their `carbonhook_tag`), and the ledger's captured rows.
`bench/soak --record` adds a run here, newest first (and to bench/RESULTS.md)."""

# (variant, the least ratio to the ceiling, the most p99 in ms); the targets.
INTAKE_TARGETS: dict[str, tuple[float | None, float | None]] = {
    "postgres new": (0.17, 25.0),
    "postgres duplicate": (0.32, 25.0),
    "sqlite new": (0.05, None),
}
PROCESSING_TARGET = 0.90
STORED_TARGET = 0.90  # intake with the events stored, over intake on an empty database
LISTING_TARGET_MS = 200.0
REPLAY_TARGET_S = 30.0


def render(run: Any, config: Any) -> str:
    out: list[str] = []
    mode = (
        "smoke (tiny counts: checks that the harness runs, not how fast)"
        if config.smoke
        else "full"
    )
    out += [
        "# carbonhook benchmark results",
        "",
        f"- command: `{config.command}`",
        f"- mode: {mode}",
        f"- finished: {datetime.now(UTC).isoformat(timespec='seconds')}, in {run.timings.get('total_s', 0):.0f} s",
        f"- intake runs: {config.rounds} round(s) of {config.seconds:g} s per variant, "
        f"{config.connections} connections, the ceiling measured before and after each round",
        "",
        "## Machine",
        "",
        *_table(["", ""], [[k, v] for k, v in run.machine.items()]),
        "",
        "## Versions",
        "",
        *_table(["", ""], [[k, v] for k, v in run.versions.items()]),
        "",
    ]
    out += _intake(run)
    out += _processing(run)
    out += _scale(run)
    out += ["## Memory (peak RSS, VmHWM)", ""]
    out += _table(["process", "MiB"], [[k, f"{v:.0f}"] for k, v in run.memory.items()])
    out += ["", "## Checks", ""]
    out += [f"- {check}" for check in run.checks] or [
        "- none failed (stored rows = answers; no body sent twice; hand-off kept up)"
    ]
    if run.skipped:
        out += ["", "## Skipped", ""] + [f"- {item}" for item in run.skipped]
    if run.profiles:
        out += ["", "## Profiles (py-spy)", ""]
        out += [f"- {name}: `{path}`" for name, path in run.profiles.items()]
    if not config.smoke and SOAK.exists():
        out += ["", SOAK.read_text().strip()]
    if not config.smoke and FINDINGS.exists():
        out += ["", FINDINGS.read_text().strip()]
    return "\n".join(out) + "\n"


def ceilings(run: Any) -> list[float]:
    """The ceiling of each round: the mean of the runs just before and just after it."""
    runs = [r["rps"] for r in run.intake.get("ceiling", [])]
    return [(a + b) / 2 for a, b in pairwise(runs)]


def _intake(run: Any) -> list[str]:
    if not run.intake:
        return []
    per_round = ceilings(run)
    ceiling_runs = run.intake["ceiling"]
    rows = [
        [
            "ceiling (bare Starlette + HMAC)",
            f"{_median(r['rps'] for r in ceiling_runs):,.0f}",
            f"{_median(r['p50_ms'] for r in ceiling_runs):.1f}",
            f"{_median(r['p99_ms'] for r in ceiling_runs):.1f}",
            "1",
            "",
            "",
        ]
    ]
    for label, results in run.intake.items():
        if label == "ceiling" or not results:
            continue
        ratios = [r["rps"] / per_round[r["round"]] for r in results]
        p99 = _median(r["p99_ms"] for r in results)
        least, most_p99 = INTAKE_TARGETS.get(label.split(" [")[0], (None, None))
        target, met = [], []
        if least is not None:
            target.append(f">= {least:.0%}")
            met.append(_median(ratios) >= least)
        if most_p99 is not None:
            target.append(f"p99 <= {most_p99:g} ms")
            met.append(p99 <= most_p99)
        rows.append(
            [
                label,
                f"{_median(r['rps'] for r in results):,.0f}",
                f"{_median(r['p50_ms'] for r in results):.1f}",
                f"{p99:.1f}",
                f"{_median(ratios):.1%} ({min(ratios):.1%}-{max(ratios):.1%})",
                ", ".join(target),
                _verdict(met),
            ]
        )
    lines = ["## Intake: POST /webhooks/carbonpass, one process", ""]
    lines += _table(
        [
            "variant",
            "req/s",
            "p50 ms",
            "p99 ms",
            "of the ceiling (range over rounds)",
            "target",
            "met",
        ],
        rows,
    )
    lines += [
        "",
        "Medians over the rounds; each round's ratio divides by the mean of the ceiling runs just "
        "before and after it. `new`: every request a distinct delivery (stored, handed to the "
        "broker); `duplicate`: the same delivery again (found, answered 200).",
        "",
        "Per run (req/s, p99 ms):",
        "",
    ]
    labels = list(run.intake)
    rounds = max(len(v) for v in run.intake.values())
    raw = []
    for label in labels:
        cells = [f"{r['rps']:,.0f} / {r['p99_ms']:.0f}" for r in run.intake[label]]
        raw.append([label, *cells, *[""] * (rounds - len(cells))])
    lines += _table(["variant", *[f"run {i + 1}" for i in range(rounds)]], raw)
    return [*lines, ""]


def _processing(run: Any) -> list[str]:
    if not run.processing:
        return []
    rows = [
        [
            f"{p['processes']} x {p['threads']}",
            f"{p['events_per_s']:.1f}",
            f"{p['events_in_window']} in {p['window_s']:.1f} s",
            f"{p['calls_per_event']:.2f}",
            f"{p['bound_per_s']:.1f}",
            f"{p['ratio']:.1%}",
            f">= {PROCESSING_TARGET:.0%}",
            _verdict([p["ratio"] >= PROCESSING_TARGET]),
        ]
        for p in run.processing
    ]
    lines = ["## Processing: events fully processed per second, emulator at 100 ms per call", ""]
    lines += _table(
        [
            "processes x threads",
            "events/s",
            "counted",
            "API calls/event",
            "bound/s",
            "of the bound",
            "target",
            "met",
        ],
        rows,
    )
    lines += [
        "",
        "bound = processes x threads / (API calls per event x latency): each thread waits for one "
        f"call at a time. events/s: over a window of {run.processing[0]['window_s']:.1f} s after the "
        "first wave finished, the least-squares slope of the count of finished events over their "
        "finish times (threads finish in waves; a plain count would round down by up to one); "
        "events went in through the receiver (PostgreSQL + Redis).",
        "",
    ]
    return lines


def _scale(run: Any) -> list[str]:
    listing = run.listing
    if not listing:
        return []
    lines = [
        f"## Scale: {listing['stored']:,} events stored ({listing['failed stored']:,} failed), {listing['backend']}",
        "",
        f"Seeded in {run.timings.get('seed_s', 0):.0f} s with one INSERT ... SELECT (bench/stores.py).",
        "",
    ]
    stored_label = next((k for k in run.intake if k.endswith("stored new")), None)
    empty_label = stored_label.replace(" stored", "") if stored_label else None
    rows = []
    if stored_label and empty_label in run.intake:
        by_round = {r["round"]: r["rps"] for r in run.intake[empty_label]}
        ratios = [r["rps"] / by_round[r["round"]] for r in run.intake[stored_label]]
        rows.append(
            [
                "intake of new events, stored vs empty database",
                f"{_median(ratios):.1%} ({min(ratios):.1%}-{max(ratios):.1%})",
                f">= {STORED_TARGET:.0%}",
                _verdict([_median(ratios) >= STORED_TARGET]),
            ]
        )
    for name, what in (
        ("admin API", "GET /admin/api/events?status=failed&limit=50"),
        ("query", "the listing's query alone (EventStore.list_events)"),
        ("CLI", "`carbonhook events list --status failed` (whole process)"),
        ("CLI start-up (--help)", "`carbonhook events list --help` (start-up and parsing only)"),
    ):
        figures = listing.get(name)
        if figures is None:
            continue
        judged = name in ("admin API", "query")
        rows.append(
            [
                what,
                f"median {figures['median_ms']:.1f} ms, p95 {figures['p95_ms']:.1f}, max {figures['max_ms']:.1f} ({figures['runs']} runs)",
                f"< {LISTING_TARGET_MS:g} ms" if judged else "",
                _verdict([figures["p95_ms"] < LISTING_TARGET_MS]) if judged else "",
            ]
        )
    replay = run.replay
    if replay:
        total = replay["total_s"]
        rows.append(
            [
                f"bulk replay of {replay['events']:,} failed events, {replay['processes']} worker "
                f"processes x {replay['threads']} threads, emulator without latency",
                (
                    f"{total:.1f} s until all processed"
                    if total is not None
                    else f"not done in {replay['timeout_s']:.0f} s"
                )
                + (
                    f" (the replay command itself: {replay['command_s']:.1f} s)"
                    if replay["command_s"]
                    else ""
                ),
                f"< {REPLAY_TARGET_S:g} s",
                _verdict([total is not None and total < REPLAY_TARGET_S]),
            ]
        )
    lines += _table(["what", "figure", "target", "met"], rows)
    if replay:
        lines += [
            "",
            f"After the replay: {replay['after']}; replays recorded: {replay['replays recorded']}.",
        ]
        if replay.get("cpu_s") and replay["events"]:
            per_event = {name: s / replay["events"] * 1000 for name, s in replay["cpu_s"].items()}
            lines += [
                "",
                "CPU time used during the replay, per replayed event: "
                + ", ".join(f"{name} {ms:.2f} ms" for name, ms in per_event.items())
                + f"; in all {sum(per_event.values()):.2f} ms.",
            ]
    return [*lines, ""]


def _median(values: Any) -> float:
    values = list(values)
    return statistics.median(values) if values else 0.0


def _verdict(met: list[bool]) -> str:
    if not met:
        return ""
    return "yes" if all(met) else "**no**"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def soak_text(summary: dict[str, Any]) -> str:
    """The human summary: what was done, then the three counts and every discrepancy."""
    chaos, deliveries, emulator = summary["chaos"], summary["deliveries"], summary["emulator"]
    kills = sum(chaos["kills"].values())
    restarts = sum(chaos["service_restarts"].values())
    lines = [
        f"soak: {summary['command']}",
        f"  deliveries: {deliveries['distinct']} distinct, {deliveries['sends']} sends "
        f"({deliveries['resends']} exact re-sends), {deliveries['http_attempts']} HTTP attempts; "
        f"refused or broken on the way: {_pairs(deliveries['refused_or_broken']) or 'none'}",
        f"  chaos: {kills} SIGKILLs ({_pairs(chaos['kills'])}), {sum(chaos['stops'].values())} SIGTERMs, "
        f"{restarts} service restarts ({_pairs(chaos['service_restarts'])}; down "
        f"{_pairs(chaos['outage_seconds'])} s), {sum(chaos['faults_injected'].values())} faults injected, "
        f"{len(chaos['unexpected_exits'])} unexpected exits",
        f"  1ClickImpact: {emulator['create_calls']} create calls, {emulator['create_calls_failed']} of them "
        f"failed (5xx or connection broken), {emulator['listing_calls']} listing calls",
        f"  settled: {'yes' if summary['settled'] else 'NO'} in {summary['timings_s'].get('settle_s', 0):g}s"
        f" after the chaos; {len(summary['replays'])} replay(s) of failed events"
        + (f" ({', '.join(str(len(r['events'])) for r in summary['replays'])} events)" if summary["replays"] else ""),
        "",
        summary["table"],
        "",
        f"soak: {'PASS' if summary['ok'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def soak_section(summary: dict[str, Any]) -> str:
    """One soak run as a section of SOAK.md: when, the command, what it did and found."""
    started = datetime.fromisoformat(summary["started"]).strftime("%Y-%m-%d %H:%M UTC")
    chaos, deliveries, emulator = summary["chaos"], summary["deliveries"], summary["emulator"]
    config = summary["config"]
    versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
    replays = summary["replays"]
    lines = [
        f"### {started}: {'PASS' if summary['ok'] else 'FAIL'}",
        "",
        f"- command: `{summary['command']}`",
        f"- versions: {versions}",
        f"- took {summary['timings_s'].get('total_s', 0):.0f} s: {summary['timings_s'].get('chaos_s', 0):.0f} s of chaos,"
        f" {summary['timings_s'].get('settle_s', 0):.0f} s to settle"
        f" ({'settled' if summary['settled'] else 'did NOT settle'});"
        f" {len(replays)} replay(s) of failed events"
        + (f" ({', '.join(str(len(r['events'])) for r in replays)} events)" if replays else ""),
        f"- 1ClickImpact emulated `{config.get('profile', 'strict')}`, {config['failure_rate']:.0%} of creates"
        f" failing at random (late ones landing {config['late_finish_s']:g} s late);"
        f" CARBONHOOK_HTTP_TIMEOUT_S {config['http_timeout_s']:g}, RECONCILE_AFTER_S"
        f" {config['reconcile_after_s']:g}, LEASE_S {config['lease_s']:g}, MAX_RETRIES {config['max_retries']}"
        + (f", AUDIT_INTERVAL_S {config['audit_interval_s']:g}" if "audit_interval_s" in config else ""),
        f"- deliveries: {deliveries['distinct']} distinct, {deliveries['sends']} sends,"
        f" {deliveries['http_attempts']} HTTP attempts (refused or broken: "
        f"{_pairs(deliveries['refused_or_broken']) or 'none'})",
        f"- chaos: SIGKILL {_pairs(chaos['kills']) or 'none'}; SIGTERM {_pairs(chaos['stops']) or 'none'};"
        f" restarts {_pairs(chaos['service_restarts']) or 'none'} (down {_pairs(chaos['outage_seconds'])} s);"
        f" {sum(chaos['faults_injected'].values())} faults injected;"
        f" {len(chaos['unexpected_exits'])} unexpected exits",
        f"- 1ClickImpact: {emulator['create_calls']} create calls, {emulator['create_calls_failed']}"
        f" failed (5xx or connection broken), {emulator['cancelled']} impacts cancelled",
        "",
        "```",
        summary["table"],
        "```",
    ]
    return "\n".join(lines)


def record_soak(summary: dict[str, Any], soak: Path = SOAK, results: Path = RESULTS) -> None:
    """Add the run to SOAK.md (after what the runs found, newest run first), then put SOAK.md
    in RESULTS.md."""
    sections = soak.read_text().split("\n### ")[1:] if soak.exists() else []
    notes = [section for section in sections if not section[:1].isdigit()]  # not a dated run
    runs = [section for section in sections if section[:1].isdigit()]
    parts = [SOAK_INTRO, *("### " + n.strip() for n in notes), soak_section(summary)]
    parts += ["### " + run.strip() for run in runs]
    soak.write_text("\n\n".join(parts) + "\n")
    soak_into_results(soak, results)


def soak_into_results(soak: Path = SOAK, results: Path = RESULTS) -> None:
    """RESULTS.md with SOAK.md as its soak section, before the findings (as `render` puts it)."""
    if not results.exists() or not soak.exists():
        return
    text, current = soak.read_text().strip(), results.read_text()
    if SOAK_HEADING in current:
        before, _, rest = current.partition(SOAK_HEADING)
        after = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
        current = before.rstrip() + "\n\n" + text + ("\n\n## " + after if after else "\n")
    elif "\n## Findings" in current:
        before, _, after = current.partition("\n## Findings")
        current = before.rstrip() + "\n\n" + text + "\n\n## Findings" + after
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    results.write_text(current)


def _pairs(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
