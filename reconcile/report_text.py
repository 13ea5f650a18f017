"""Human output: the plan and the apply report.

Plain text when stdout is not a terminal, `NO_COLOR` is set or `--no-color`
is given (cron, pipes: no control codes); rich styling otherwise. Both paths
produce the same characters.
"""
from __future__ import annotations

import os
import sys

from .plan_model import SUMMARY_WORDS, SYMBOLS, Plan

STYLES = {"create": "green", "update": "yellow", "replace": "yellow", "delete": "red", "run": "cyan",
          "noop": "dim", "blocked": "bold red"}
RESULT_STYLES = {"changed": "green", "unchanged": "dim", "failed": "bold red", "skipped": "yellow"}


def use_color(stream, no_color_flag: bool) -> bool:
    if no_color_flag or "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


class Writer:
    """Writes (text, style) segments as plain text or through rich."""

    def __init__(self, stream=None, color: bool = False):
        self.stream = stream or sys.stdout
        self.color = color
        self._console = None
        if color:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=True, force_terminal=True)

    def line(self, *segments) -> None:
        if self._console is None:
            self.stream.write("".join(text for text, _ in segments) + "\n")
            return
        from rich.text import Text

        out = Text()
        for text, style in segments:
            out.append(text, style=style or None)
        self._console.print(out)


def summary_line(plan: Plan) -> str:
    counts = plan.summary()
    parts = [f"{counts[a]} {SUMMARY_WORDS[a]}" for a in SUMMARY_WORDS if counts[a]]
    if not parts:
        return f"No changes. {plan.host} matches {plan.state_file}."
    causes = plan.causes()
    why = ", ".join(f"{n} {cause}" for cause, n in causes.items() if n)
    return "Plan: " + ", ".join(parts) + "." + (f" ({why})" if why else "")


NO_RUNTIME = ("engine_unreachable", "runtime_unavailable")


def render_plan(plan: Plan, w: Writer, title: str = "plan", show_diff: bool = False) -> None:
    """The plan as text. `show_diff`: print the whole diff of new files too
    (an update's diff is always printed: it is what changes)."""
    sets = "".join(f" · -e {o}" for o in plan.overrides)
    w.line((f"sglprep {title} · {plan.host} · {plan.state_file}{sets}", "bold"))
    cause = next((c for c in plan.blocked if c.reason in NO_RUNTIME), None)
    if cause is not None:  # one line that says why this host cannot prime caches, before the details
        what = "no Docker engine" if cause.reason == "engine_unreachable" else "no usable SGLang runtime or GPU"
        w.line(("note: ", "yellow"), (f"this host has {what}, so the cache stages cannot run here; the storage "
                                     f"part still applies. To try sglprep without a GPU or Docker: sglprep -f "
                                     f"states/demo.yaml plan", ""))
    shown = [c for c in plan.changes if c.action != "noop" or c.show]
    name_width = max([26] + [len(c.name) for c in shown])
    for c in shown:
        style = STYLES[c.action]
        w.line((f"  {SYMBOLS[c.action]} ", style), (f"{c.type:<9}  ", ""), (f"{c.name:<{name_width}} ", ""),
               (c.text(), style if c.action != "noop" else "dim"),
               (f" [{c.cause}]" if c.cause and c.action != "noop" else "", "dim"))
        if c.diff and c.action == "create" and not show_diff:
            added = sum(1 for ln in c.diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
            w.line((f"      (a new file of {added} lines; --diff shows it)", "dim"))
            continue
        for diff_line in c.diff.splitlines():
            diff_style = "green" if diff_line.startswith("+") else "red" if diff_line.startswith("-") else "dim"
            w.line((f"      {diff_line}", diff_style))
    for warning in plan.warnings:
        w.line(("warning: ", "yellow"), (warning, ""))
    w.line((summary_line(plan), "bold"))
    if plan.blocked:
        w.line(("Blocked changes need an operator: each line says what to run (→).", "red"))


def render_apply(report, w: Writer) -> None:
    counts = report.counts()
    if not report.results:
        w.line(("Apply complete: nothing to do.", "bold"))
        return
    for r in report.results:
        w.line((f"  {r.status:<9} ", RESULT_STYLES[r.status]), (f"{r.address}", ""),
               (f"  {r.message}" if r.message else "", "dim"))
    w.line((f"Apply {'complete' if report.exit_code == 0 else 'finished with errors'}: "
            f"{counts['changed']} changed, {counts['unchanged']} unchanged, {counts['failed']} failed, "
            f"{counts['skipped']} skipped.", "bold" if report.exit_code == 0 else "bold red"))
    if report.log_file:
        w.line((f"Session log: {report.log_file}", "dim"))


PHASE_WORDS = {"check_flags": "checking server flags", "wait_lock": "waiting for the stage lock",
               "preflight": "preflight", "repair": "removing damaged artifacts", "launch": "starting server",
               "readiness": "waiting for readiness", "generate": "generating", "telemetry_probe": "probing telemetry",
               "teardown": "stopping server", "verify": "verifying", "manifest": "recording artifacts",
               "compile": "compiling (compile_deep_gemm)", "command": "running its command"}


class StageProgress:
    """Live stage progress: on a terminal, a status line (stage, phase,
    elapsed time) redrawn every second; otherwise plain lines on stderr, one
    per phase change."""

    def __init__(self, stream=None, live: bool = False):
        self.stream = stream or sys.stderr
        self.live = live
        self._status = None
        self._last = None
        self._current = None  # (stage, phase, started at monotonic)
        self._ticker = None
        self._stop = None

    def _text(self) -> str:
        import time

        stage, phase, started = self._current
        return f"{stage} · {PHASE_WORDS.get(phase, phase)} · {time.monotonic() - started:.0f}s"

    def __call__(self, stage: str, phase: str, elapsed: float) -> None:
        import time

        if self.live:
            self._current = (stage, phase, time.monotonic() - elapsed)
            if self._status is None:
                import threading

                from rich.console import Console

                self._status = Console(file=self.stream, force_terminal=True).status(self._text())
                self._status.start()
                self._stop = threading.Event()
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
            else:
                self._status.update(self._text())
            return
        if (stage, phase) != self._last:
            self._last = (stage, phase)
            self.stream.write(f"sglprep: {stage}: {phase}\n")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if self._status is not None and self._current is not None:
                self._status.update(self._text())

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._status is not None:
            self._status.stop()
            self._status = None


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_inspect(snapshot: dict, host: str, w: Writer) -> None:
    """The cache snapshot as a table (rich on a terminal, aligned text otherwise)."""
    rows = [("cache", "exists", "valid", "partial", "files", "size", "newest", "reason")]
    for name, e in snapshot.items():
        if name == "schema_version":
            continue
        rows.append((name, "yes" if e["exists"] else "no", "yes" if e["valid"] else "no",
                     "yes" if e["partial"] else "no", "-" if e["file_count"] is None else str(e["file_count"]),
                     _size(e["size_bytes"]), e["latest_mtime_iso"] or "-", e["reason"]))
    w.line((f"sglprep inspect · {host}", "bold"))
    _render_table(rows, w)
    for name, e in snapshot.items():
        if name != "schema_version" and e.get("newest_files"):
            w.line((f"  newest in {name}:", "bold"))
            for f in e["newest_files"]:
                w.line((f"    {f['mtime_iso']}  {_size(f['size_bytes']):>9}  {f['path']}", "dim"))


def _render_table(rows: list, w: Writer) -> None:
    if w.color:
        from rich.table import Table

        table = Table(*rows[0], box=None, header_style="bold")
        for row in rows[1:]:
            table.add_row(*row, style="green" if row[2] == "yes" else "yellow")
        w._console.print(table)
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        w.line(("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), ""))


def render_reset(entries: list, host: str, dry_run: bool, w: Writer) -> None:
    w.line((f"sglprep reset · {host}" + (" · dry run" if dry_run else ""), "bold"))
    from datetime import datetime, timezone

    for e in entries:
        newest = datetime.fromtimestamp(e.newest_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") \
            if e.newest_mtime else "-"
        w.line(("  - ", "red"), ("cache      ", ""), (f"{e.cache}/{e.name}  ", ""),
               (f"delete: {e.files} files, {_size(e.bytes)}, newest {newest}", "red"))
    total = sum(e.bytes for e in entries)
    w.line((f"Reset: {len(entries)} to delete ({_size(total)})." if entries else "Reset: nothing matches.", "bold"))
