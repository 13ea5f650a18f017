"""Executors for storage resources: directories, rendered files, stale locks,
the stale pointer.

Each executor acts on one planned change. Just before acting it re-diffs the
resource against fresh facts: a resource that already converged reports
`unchanged`, one that now needs something else fails with the new reason, and
only a resource that still needs the planned action is touched. All writes
run as the storage owner (`as_owner`).
"""
from __future__ import annotations

import os

from .context import Context
from .exec_privs import as_owner
from .journal import atomic_write
from .plan import diff_resource
from .plan_model import CHANGED, FAILED, UNCHANGED, Change, Result
from .stages import catalog
from .state_load import Desired
from .state_templates import desired_files


class StorageExecutor:
    """Carries out storage changes for one run, and the extra resources a
    stage kind owns (its `apply_resource`)."""

    handles = ("check", "directory", "file", "lock", "pointer", "marker", "port", "tempfiles", "orphans")

    def __init__(self, desired: Desired, ctx: Context, facts):
        self.desired = desired
        self.ctx = ctx
        self.facts = facts
        self.actions = {"directory": self._do_directory, "file": self._do_file, "lock": self._do_lock,
                        "pointer": self._do_pointer, "tempfiles": self._do_tempfiles, "orphans": self._do_orphans}
        kinds = catalog.resource_types()
        for stage in catalog.stages(desired.data):
            for rtype, kind in kinds.items():
                if isinstance(stage, kind):
                    self.actions[rtype] = stage.apply_resource
        self.handles = self.handles + tuple(kinds)

    def _recheck(self, change: Change) -> Change | None:
        return diff_resource(change.address, self.desired, self.facts.fresh(), self.ctx, os.getpid())

    def execute(self, change: Change) -> Result:
        if change.action == "blocked":
            return Result(change.address, change.action, FAILED, f"blocked: {change.message}", change.reason)
        fresh = self._recheck(change)
        if fresh is None or fresh.action == "noop":
            return Result(change.address, change.action, UNCHANGED, "already converged")
        if fresh.action != change.action:
            return Result(change.address, change.action, FAILED,
                          f"changed since the plan: now {fresh.text()}", fresh.reason)
        if fresh.type == "orphans":
            import psutil  # noqa: F401 - imported as root: nothing is imported after privileges drop

        action = self.actions.get(fresh.type)
        if action is None:
            return Result(change.address, change.action, FAILED, f"no action for {fresh.type} resources",
                          "internal_error")
        try:
            with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
                message = action(fresh)
        except OSError as exc:
            error_type = "permissions_unexpected" if isinstance(exc, PermissionError) else "os_error"
            return Result(change.address, change.action, FAILED,
                          f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), error_type)
        return Result(change.address, change.action, CHANGED, message)

    # ------------------------------------------------------------- actions
    def _do_directory(self, change: Change) -> str:
        path = self.ctx.path(change.name)
        if "/" not in change.name and not os.path.isdir(self.ctx.root):
            os.makedirs(self.ctx.root, exist_ok=True)
        os.mkdir(path)
        return f"created {path}"

    def _do_file(self, change: Change) -> str:
        want = {f.rel: f for f in desired_files(self.desired)}[change.name]
        path = self.ctx.path(change.name)
        atomic_write(path, want.render())
        return f"wrote {path}"

    def _do_lock(self, change: Change) -> str:
        path = self.ctx.path(f"profiles/.locks/{change.name}.lock")
        os.unlink(path)
        return f"removed {change.message}"

    def _do_pointer(self, change: Change) -> str:
        path = self.ctx.path("telemetry/container_run_meta.env")
        os.unlink(path)
        return f"removed {change.message}"

    def _do_tempfiles(self, change: Change) -> str:
        for path in change.observed["paths"]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return f"removed {len(change.observed['paths'])} leftover temp file(s)"

    def _do_orphans(self, change: Change) -> str:
        """Stop each orphan's whole process group: SIGTERM, the grace period,
        SIGKILL, then confirm it is gone (as any teardown does)."""
        import signal
        import time

        from .exec_runtime import _group_alive, _signal_group

        groups = sorted({pgid for _, pgid in change.observed["processes"]})
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + change.observed["teardown_s"]
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            time.sleep(0.1)
        for pgid in groups:
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            time.sleep(0.1)
        left = [g for g in groups if _group_alive(g)]
        if left:
            raise OSError(f"process group(s) {left} survived SIGKILL")
        return f"stopped {len(groups)} process group(s) a killed apply left"
