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
from typing import NamedTuple

from .exec_privs import as_owner
from .facts_host import HostFacts
from .journal import atomic_write
from .plan import Context, diff_resource
from .plan_model import Change
from .state_load import Desired
from .state_templates import desired_files

CHANGED, UNCHANGED, FAILED, SKIPPED = "changed", "unchanged", "failed", "skipped"


class Result(NamedTuple):
    address: str
    action: str
    status: str  # changed | unchanged | failed | skipped
    message: str = ""
    error_type: str = ""

    def to_json(self) -> dict:
        out = {"address": self.address, "action": self.action, "result": self.status, "message": self.message}
        if self.error_type:
            out["error_type"] = self.error_type
        return out


class StorageExecutor:
    """Carries out storage changes for one run."""

    handles = ("check", "directory", "file", "lock", "pointer", "marker", "port", "flashinfer")

    def __init__(self, desired: Desired, ctx: Context, environ: dict | None = None):
        self.desired = desired
        self.ctx = ctx
        self.environ = environ

    def _recheck(self, change: Change) -> Change | None:
        return diff_resource(change.address, self.desired, HostFacts(self.environ), self.ctx, os.getpid())

    def execute(self, change: Change) -> Result:
        if change.action == "blocked":
            return Result(change.address, change.action, FAILED, f"blocked: {change.message}", change.reason)
        fresh = self._recheck(change)
        if fresh is None or fresh.action == "noop":
            return Result(change.address, change.action, UNCHANGED, "already converged")
        if fresh.action != change.action:
            return Result(change.address, change.action, FAILED,
                          f"changed since the plan: now {fresh.text()}", fresh.reason)
        try:
            with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
                message = getattr(self, f"_do_{fresh.type}")(fresh)
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

    def _do_flashinfer(self, change: Change) -> str:
        """Remove module builds without their .so and the free locks they left."""
        import shutil

        for path in change.observed["stale_locks"]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for name in change.observed["broken"]:
            path = os.path.join(change.observed["cached_ops"], name)
            if os.path.lexists(path):
                shutil.rmtree(path)  # an error (e.g. another owner's files) fails the change
        return (f"removed {len(change.observed['broken'])} incomplete module build(s), "
                f"{len(change.observed['stale_locks'])} stale lock(s)")
