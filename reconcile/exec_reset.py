"""`sglprep reset`: delete selected cache entries, as the storage owner,
under the run lock, never while a stage holds its lock, journaling each
removal in the session log."""
from __future__ import annotations

import os
import shutil

from .context import Context
from .errors import SglprepError
from .exec_apply import RunLock
from .exec_privs import as_owner
from .facts_host import HostFacts, linked_component
from .journal import SessionLog, new_run_id, utc_now_iso
from .locks import lock_liveness
from .state_layout import LOCKS_DIR, LOGS_DIR, lock_path


class ResetRefused(SglprepError):
    pass


def live_stage_locks(ctx: Context) -> list[str]:
    facts = HostFacts()
    held = []
    for entry in facts.listdir(ctx.path(LOCKS_DIR)):
        if not entry.endswith(".lock") or entry == "apply.lock":
            continue
        name = entry[: -len(".lock")]
        lock = facts.lock_file(name, ctx.path(lock_path(name)))
        if lock.kind == "ok":
            state, why = lock_liveness(lock, ctx.hostname)
            if state != "stale":
                held.append(f"{name} ({why})")
    return held


def reset(entries: list, desired, ctx: Context, say=None) -> dict:
    """Delete `entries` (from stages.caches.reset_selection); the JSON report."""
    held = live_stage_locks(ctx)
    if held:
        raise ResetRefused("refusing to reset while a stage runs: " + "; ".join(held))
    run_id = new_run_id("reset")
    report = {"format_version": "1", "host": desired.host, "run_id": run_id, "dry_run": False,
              "started_at": utc_now_iso(), "removed": [], "errors": [], "log_file": None}
    lock = RunLock(ctx, desired.data["timeouts"]["lock_s"], desired.data["heartbeat_s"], "sglprep reset",
                   say or (lambda line: None))
    log = SessionLog(ctx.path(f"{LOGS_DIR}/sglprep-{run_id}.log"))
    if os.path.isdir(ctx.path(LOCKS_DIR)) and not linked_component(ctx.root, LOCKS_DIR):
        lock.acquire()
    try:
        held = live_stage_locks(ctx)  # again, under the run lock
        if held:
            raise ResetRefused("refusing to reset while a stage runs: " + "; ".join(held))
        with as_owner(ctx.owner.uid, ctx.owner.gid):
            if os.path.isdir(os.path.dirname(log.path)) and not linked_component(ctx.root, LOGS_DIR):
                log.open()
                report["log_file"] = log.path
            for e in entries:
                try:
                    if os.path.isdir(e.path) and not os.path.islink(e.path):
                        shutil.rmtree(e.path)
                    else:
                        os.unlink(e.path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    report["errors"].append({"path": e.path, "error": exc.strerror or str(exc)})
                    continue
                item = {"cache": e.cache, "name": e.name, "path": e.path, "files": e.files, "bytes": e.bytes}
                report["removed"].append(item)
                if report["log_file"]:
                    log.event("RESET_REMOVED", **item)
            if report["log_file"]:
                log.event("RESET_END", run_id=run_id, removed=len(report["removed"]), errors=len(report["errors"]))
    finally:
        log.close()
        lock.release()
    report["finished_at"] = utc_now_iso()
    report["summary"] = {"entries": len(report["removed"]), "bytes": sum(i["bytes"] for i in report["removed"]),
                         "errors": len(report["errors"])}
    return report
