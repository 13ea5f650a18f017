"""Apply a plan: take the run lock, carry out each change in order through its
executor, skip the dependents of a failure, and journal every result.

The run lock (`lock:apply`, `profiles/.locks/apply.lock`) lives in the
storage it protects, so on a fresh host the directories leading to it are
created first (each re-checked like any change), then the lock is taken, then
everything else runs.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from .context import Context
from . import exec_signals
from .errors import EXIT_ERROR, EXIT_OK, InputError, Interrupted, LockTimeoutError
from .exec_privs import as_owner
from .exec_storage import StorageExecutor
from .facts_host import HostFacts, linked_component
from .journal import SessionLog, new_run_id, utc_now_iso
from .locks import LockTimeout, acquire, lock_info, release
from .plan_model import CHANGED, FAILED, SKIPPED, UNCHANGED, Plan, Result
from .redaction import redact, secret_values
from .stages import catalog
from .stages.executor import StagesExecutor
from .state_layout import LOCKS_DIR, LOGS_DIR, lock_path, parent_dir
from .state_load import Desired

RUN_LOCK = "apply"


@dataclass
class ApplyReport:
    run_id: str
    host: str
    fingerprint: str
    started_at: str
    finished_at: str = ""
    results: list = field(default_factory=list)
    log_file: str = ""
    exit_code: int = EXIT_OK
    result_json: str = ""  # prep_result.json, when stages were applied
    result_status: str = ""  # the RESULT_STATUS line
    interrupted: str = ""  # the signal that stopped the apply (SIGINT, SIGTERM, SIGHUP)

    def counts(self) -> dict:
        out = {CHANGED: 0, UNCHANGED: 0, FAILED: 0, SKIPPED: 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def to_json(self) -> dict:
        return {"format_version": "1", "host": self.host, "run_id": self.run_id, "fingerprint": self.fingerprint,
                "started_at": self.started_at, "finished_at": self.finished_at, "summary": self.counts(),
                "results": [r.to_json() for r in self.results], "log_file": self.log_file,
                "result_json": self.result_json or None, "result_status": self.result_status or None,
                "interrupted": self.interrupted or None, "exit_code": self.exit_code}


class RunLock:
    """`profiles/.locks/apply.lock` held by this process for the whole apply."""

    def __init__(self, ctx: Context, timeout_s: float, heartbeat_s: float, command: str, say):
        self.ctx, self.timeout_s, self.heartbeat_s, self.command, self.say = ctx, timeout_s, heartbeat_s, command, say
        self.path = ctx.path(lock_path(RUN_LOCK))
        self.held = False

    def _owner(self):
        return as_owner(self.ctx.owner.uid, self.ctx.owner.gid)

    def acquire(self) -> bool:
        """Take the run lock; True when another holder had it first."""
        def on_stale(why: str) -> None:
            self.say(f"lock:apply: reclaiming stale run lock ({why})")

        def on_wait(lock, why: str, held: float) -> None:
            self.say(f"lock:apply: waiting for pid {lock.owner_pid} (started {lock.started_at or '?'})")

        try:
            waited = acquire(self.path, RUN_LOCK, lock_info(self.ctx.hostname, self.command), self.ctx.hostname,
                             self.timeout_s, self._owner, on_stale=on_stale, on_wait=on_wait,
                             wait_every_s=self.heartbeat_s)
        except LockTimeout as exc:
            lock = exc.lock
            raise LockTimeoutError(
                f"another apply holds the run lock {self.path}: pid {lock.owner_pid}, started "
                f"{lock.started_at or '?'} ({exc}); waited {self.timeout_s:g}s (timeouts.lock_s)") from None
        self.held = True
        return waited

    def release(self) -> None:
        if self.held:
            release(self.path, RUN_LOCK, self._owner)
        self.held = False


def _bootstrap_addresses() -> list[str]:
    """The directories the run lock needs, outermost first."""
    chain, rel = [], LOCKS_DIR
    while rel:
        chain.append(f"directory:{rel}")
        rel = parent_dir(rel)
    return ["check:storage_owner"] + chain[::-1]


# A stage stopped by one of these (found at plan time, e.g. a busy port) is
# an error of that type with the stage's exit code, as the seeds' stages
# report it, not a bare "dependency failed".
STAGE_ERRORS = {"port_busy": "port_busy", "insufficient_disk": "insufficient_disk",
                "permissions_unexpected": "permissions_unexpected", "owner_mismatch": "permissions_unexpected",
                "symlink": "permissions_unexpected", "not_a_directory": "permissions_unexpected"}

STORAGE_TYPES = ("check", "directory", "file", "lock", "marker", "pointer", "port", "tempfiles", "orphans")


def executor_table(desired: Desired, ctx: Context, facts, say, stage_executor) -> dict:
    """The closed {resource type: executor} table of one apply. A change of
    any other type is an error, never a silent skip."""
    storage = StorageExecutor(desired, ctx, facts)
    table = {t: storage for t in STORAGE_TYPES + tuple(catalog.resource_types())}
    if ctx.runtime_kind == "docker":
        from .exec_docker import ContainerExecutor
        from .plan import desired_container

        want, want_hash = desired_container(desired, ctx)
        table["container"] = ContainerExecutor(desired, ctx, want, want_hash, facts.environ, say)
    if ctx.runtime_kind == "local":
        from .exec_telemetry import TelemetryExecutor

        table["telemetry"] = TelemetryExecutor(desired, ctx, facts, say)
    table["stage"] = stage_executor
    return table


def check_types(plan: Plan, types) -> None:
    unknown = sorted({c.type for c in plan.changes if c.type not in types})
    if unknown:
        raise InputError(None, None, None, f"no executor for resource type(s) {', '.join(unknown)} in the plan "
                         f"(known: {', '.join(sorted(types))})")


class _LazyStages:
    """The stage executor, created at the first stage (with a container, its
    run id and session log come from the manifest it has just published)."""

    def __init__(self, make):
        self.make, self.executor = make, None

    def get(self):
        if self.executor is None:
            self.executor = self.make()
        return self.executor

    def execute(self, change) -> Result:
        return self.get().execute(change)


def apply_plan(plan: Plan, desired: Desired, ctx: Context, *, only: list | None = None,
               command: str = "sglprep apply", say=None, progress=None, facts=None,
               saved: bool = False) -> ApplyReport:
    """Carry out `plan`. `facts`: the HostFacts the plan was built from (its
    runtime probe is reused). `saved`: the plan came from `plan -o`; if the
    run lock was held when we came, the host is planned again and a saved
    plan that no longer matches is refused (exit 3), an unsaved one replaced.
    `say(line)`: lock and warning lines; `progress(stage, phase, elapsed_s)`:
    stage progress for a live display."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    facts = facts if facts is not None else HostFacts()
    environ = facts.environ
    report = ApplyReport(run_id=new_run_id(), host=plan.host, fingerprint=plan.fingerprint,
                         started_at=utc_now_iso())
    selected = _select(plan, only)
    todo = [c for c in plan.changes if c.action != "noop" and c.address in selected]
    if not todo:  # a converged host: take no lock, write nothing (but a missing or outdated record)
        report.finished_at = utc_now_iso()
        report.result_json, report.result_status = _converged_result(plan, desired, ctx, facts)
        _record_if_outdated(plan, desired, ctx, report, facts)
        return report

    scrub = secret_values(desired.data)
    log = SessionLog(ctx.path(f"{LOGS_DIR}/sglprep-{report.run_id}.log"), scrub)
    wants_stages = any(c.type == "stage" for c in todo)
    status: dict = {}
    cause: dict = {}  # address -> the error type at the root of its failure (through skipped dependencies)

    def make_stages() -> StagesExecutor:
        nonlocal log
        if ctx.runtime_kind == "docker":
            run_id, log_path = _container_run(ctx, environ)
            if run_id:
                report.run_id = run_id
                log = SessionLog(log_path, scrub)
        return StagesExecutor(plan, desired, ctx, log, report.run_id, progress, facts)

    stages = _LazyStages(make_stages)
    executors = executor_table(desired, ctx, facts, say, stages)
    check_types(plan, executors)

    def run(change) -> None:
        failed_dep = next((d for d in change.depends_on if status.get(d) in (FAILED, SKIPPED)), None)
        if failed_dep:
            cause[change.address] = cause.get(failed_dep, "")
            stage_error = STAGE_ERRORS.get(cause[change.address]) if change.type == "stage" else None
            if stage_error:  # the seeds' outcome: the stage fails with what stopped it, and its exit code
                message = f"{failed_dep}: {next((r.message for r in report.results if r.address == failed_dep), '')}"
                result = stages.get().fail(change, stage_error, message)
            else:
                result = Result(change.address, change.action, SKIPPED, f"dependency failed: {failed_dep}")
                if change.type == "stage":
                    stages.get().skip(change, result.message)
        elif change.type == "stage" and not (stages.get() and _open_log(log, ctx, report)):
            result = Result(change.address, change.action, FAILED, "cannot open the session log",
                            "permissions_unexpected")
        else:
            result = executors[change.type].execute(change)
            if result.status == FAILED:
                cause[change.address] = result.error_type
        status[change.address] = result.status
        report.results.append(result)

    bootstrap = set(_bootstrap_addresses())
    lock = RunLock(ctx, desired.data["timeouts"]["lock_s"], desired.data["heartbeat_s"], command, say)
    first = [c for c in todo if c.address in bootstrap]
    rest = [c for c in todo if c.address not in bootstrap]
    pending = list(first + rest)

    def stop_here(current, message: str, error_type: str) -> None:
        """The change in hand failed with `error_type`; nothing after it runs."""
        if current is not None and current.address not in status:
            status[current.address] = FAILED
            report.results.append(Result(current.address, current.action, FAILED, message, error_type))
        for change in pending:
            if change.address in status:
                continue
            status[change.address] = SKIPPED
            report.results.append(Result(change.address, change.action, SKIPPED, f"not run: {message}"))
            if change.type == "stage":
                stages.get().skip(change, f"not run: {message}", error_type)

    current = None
    interrupted: Interrupted | None = None
    try:
        try:
            for change in first:
                current = change
                run(change)
            current = None
            if os.path.isdir(ctx.path(LOCKS_DIR)) and not linked_component(ctx.root, LOCKS_DIR):
                if lock.acquire():  # someone applied meanwhile: act on the host as it is now
                    plan, rest = _replan(plan, desired, facts, only, saved, first, say)
                    pending[:] = first + rest
            elif not any(r.status in (FAILED, SKIPPED) for r in report.results):
                say(f"warning: {ctx.path(LOCKS_DIR)} could not be created; applying without the run lock")
            for change in rest:
                current = change
                run(change)
            current = None
        except Interrupted as exc:
            exec_signals.defer()
            interrupted = exc
            stop_here(current, f"apply interrupted by {exc.name}", "interrupted")
        except LockTimeoutError:
            raise
        except Exception as exc:  # a fault nobody planned for: journal it, never a bare traceback
            exec_signals.defer()
            summary = " ".join(str(exc).split())[:300]
            stop_here(current, f"{type(exc).__name__}: {summary}".rstrip(": "), "internal_error")
    finally:
        exec_signals.defer()  # a second signal now must not cut the journal short
        report.finished_at = utc_now_iso()
        failed = any(r.status in (FAILED, SKIPPED) for r in report.results)
        report.exit_code = EXIT_ERROR if failed else EXIT_OK
        def safely(what: str, fn, *args):
            """Journaling is best effort on a broken host (a full disk): each
            step on its own, each failure said, the run lock always released."""
            try:
                return fn(*args)
            except OSError as exc:
                say(f"warning: could not {what}: {exc.strerror or exc}")
                report.exit_code = report.exit_code or EXIT_ERROR
                return None

        if wants_stages:
            stages.get()
        if stages.executor is not None:
            usable = safely("open the session log", _open_log, log, ctx, report)
            done = safely("write the stage results", stages.executor.finish, bool(usable))
            if done:
                report.result_json, report.result_status, stage_code = done
                if stage_code:
                    report.exit_code = stage_code
        elif not report.result_status:  # no stage work in this apply: the stages as the plan found them
            report.result_json, report.result_status = _converged_result(plan, desired, ctx, facts)
        if interrupted is not None:
            report.exit_code = interrupted.exit_code
            report.interrupted = interrupted.name
        safely("journal the results", _journal, report, ctx, log)
        log.close()
        if log.failed:
            say(f"warning: the session log is incomplete: {log.failed}")
        safely("record the apply", _record_apply, desired, ctx, report, facts)
        lock.release()
    return report


def _replan(plan: Plan, desired: Desired, facts, only, saved: bool, done: list, say) -> tuple:
    """(plan, changes still to do) after waiting for the run lock."""
    from .errors import StalePlanError
    from .plan import build_plan

    fresh = build_plan(desired, facts.fresh(), own_pid=os.getpid(), verify=True)
    if fresh.fingerprint != plan.fingerprint:
        if saved:
            raise StalePlanError("Saved plan is stale: another apply changed the host while this one waited for "
                                 "the run lock. Nothing more was applied; run `sglprep plan` again.")
        say("lock:apply: the host changed while this apply waited; planned again")
    done_addresses = {c.address for c in done}
    selected = _select(fresh, only)
    rest = [c for c in fresh.changes if c.action != "noop" and c.address in selected
            and c.address not in done_addresses]
    plan.changes[:] = fresh.changes  # the stage executor and the report read the same plan
    return plan, rest


def _iso(epoch: float) -> str | None:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if epoch else None


def _converged_result(plan: Plan, desired: Desired, ctx: Context, facts) -> tuple[str, str]:
    """The RESULT lines of an apply with nothing to do: every stage as the
    plan found it (noop or skipped), and the last prep_result.json written
    on this host, when there is one."""
    from .state_layout import LAST_APPLY

    names = [s.name for s in catalog.stages(desired.data)]
    states = {name: ("skipped" if (c := plan.find(f"stage:{name}")) is None or c.reason == "skipped" else "noop")
              for name in names}
    record = facts.fresh().last_apply(ctx.path(LAST_APPLY))
    path = record.result_json if record.kind == "ok" else ""
    if path and not (path.startswith(ctx.root.rstrip("/") + "/") and os.path.isfile(path)):
        path = ""
    line = "RESULT_STATUS ok " + " ".join(f"{n}:{states[n]}" for n in names)
    return path, line


def _record_if_outdated(plan: Plan, desired: Desired, ctx: Context, report: ApplyReport, facts) -> None:
    from .plan import plan_intents
    from .state_layout import LAST_APPLY

    record = facts.fresh().last_apply(ctx.path(LAST_APPLY))
    if record.kind != "ok" or record.intents != plan_intents(plan):
        _record_apply(desired, ctx, report, facts)


def _record_apply(desired: Desired, ctx: Context, report: ApplyReport, facts) -> None:
    """telemetry/sglprep/last-apply.json: the applied desired state, each
    resource's intent and the facts after the apply, written atomically.
    Later plans classify drift against it (corrective vs intentional)."""
    from .journal import atomic_write_json
    from .plan import build_plan, plan_intents
    from .state_layout import LAST_APPLY

    path = ctx.path(LAST_APPLY)
    if not os.path.isdir(os.path.dirname(path)) or linked_component(ctx.root, LAST_APPLY):
        return
    after = build_plan(desired, facts.fresh(), own_pid=os.getpid())
    previous = facts.fresh().last_apply(path)
    record_result = previous.result_json if previous.kind == "ok" else ""
    doc = {"format_version": "1", "host": desired.host, "applied_at": report.finished_at, "run_id": report.run_id,
           "state_file": desired.state_file, "sources_sha": desired.sources_sha, "exit_code": report.exit_code,
           "desired": redact(desired.data), "intents": plan_intents(after),
           "result_json": report.result_json or record_result,
           "last_success_at": report.finished_at if report.exit_code == 0 else _iso(previous.last_success_at),
           "facts": {c.address: c.observed for c in after.changes}}
    try:
        with as_owner(ctx.owner.uid, ctx.owner.gid):
            atomic_write_json(path, doc)
    except OSError:
        pass


def _container_run(ctx: Context, environ) -> tuple[str, str]:
    """(run id, host path of the session log) from the pointer's manifest."""
    from .state_layout import POINTER

    fact = HostFacts(environ).pointer(ctx.path(POINTER), "/telemetry", ctx.path("telemetry"))
    if fact.kind != "ok" or not fact.manifest_exists:
        return "", ""
    run_id = str(fact.manifest.get("container_run_id", ""))
    log = str((fact.manifest.get("paths", {}).get("container", {}) or {}).get("log_file", ""))
    if log.startswith("/telemetry/"):
        log = ctx.path("telemetry/" + log[len("/telemetry/"):])
    return run_id, log or ctx.path(f"{LOGS_DIR}/sglprep-{run_id}.log")


def _open_log(log: SessionLog, ctx: Context, report: ApplyReport) -> bool:
    """Open the session log as the owner, once its directory exists."""
    if log._fh is not None:
        return True
    if not os.path.isdir(os.path.dirname(log.path)):
        return False
    rel = os.path.relpath(log.path, ctx.root)
    if not rel.startswith("..") and linked_component(ctx.root, rel):
        return False
    try:
        with as_owner(ctx.owner.uid, ctx.owner.gid):
            log.open()
    except OSError:
        return False
    report.log_file = log.path
    return True


def _select(plan: Plan, only: list | None) -> set:
    """Addresses to apply: all, or `--only` ones plus what they depend on
    (and the run lock's own directories, which every apply needs)."""
    if not only:
        return {c.address for c in plan.changes}
    by_address = {c.address: c for c in plan.changes}
    chosen, stack = set(), list(only) + _bootstrap_addresses()
    while stack:
        address = stack.pop()
        if address in chosen or address not in by_address:
            continue
        chosen.add(address)
        stack.extend(by_address[address].depends_on)
    return chosen


def _journal(report: ApplyReport, ctx: Context, log: SessionLog) -> None:
    """Append the results to the session log, when its directory exists."""
    if not report.results or not _open_log(log, ctx, report):
        return
    for r in report.results:
        log.event("RESULT", address=r.address, action=r.action, result=r.status, message=r.message)
    if report.result_json:
        log.write(f"RESULT_JSON {report.result_json}")
        log.write(report.result_status)
    log.event("APPLY_END", run_id=report.run_id, summary=report.counts(), exit_code=report.exit_code)
