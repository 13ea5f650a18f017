"""The executor of `telemetry:prometheus`: start, restart and stop the
Prometheus server sglprep keeps for a local runtime.

It runs as the storage owner (a process started with that uid, gid and no
supplementary groups, never a root process with a lowered effective uid),
in its own session so that it outlives the apply, with its output appended
to telemetry/logs/prometheus.log. The pid file records its pid, start time
and command line; a later plan checks all three against the process table.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

from .context import Context
from .diff_telemetry import PID_FILE, TSDB_DIR
from .exec_privs import as_owner
from .journal import atomic_write_json
from .plan_model import CHANGED, FAILED, UNCHANGED, Change, Result

READY_S = 30
LOG = "telemetry/logs/prometheus.log"


class TelemetryExecutor:
    def __init__(self, desired, ctx: Context, facts, say=None):
        self.desired, self.ctx, self.facts = desired, ctx, facts
        self.say = say or (lambda line: None)

    def execute(self, change: Change) -> Result:
        from .plan import diff_resource

        if change.action == "blocked":
            return Result(change.address, change.action, FAILED, f"blocked: {change.message}", change.reason)
        fresh = diff_resource(change.address, self.desired, self.facts.fresh(), self.ctx, os.getpid())
        if fresh is None or fresh.action == "noop":
            return Result(change.address, change.action, UNCHANGED, "already converged")
        if fresh.action != change.action:
            return Result(change.address, change.action, FAILED, f"changed since the plan: now {fresh.text()}",
                          fresh.reason)
        try:
            if fresh.action in ("update", "delete"):
                self._stop(fresh.observed["pid"])
            if fresh.action == "delete":
                return Result(change.address, change.action, CHANGED, f"stopped pid {fresh.observed['pid']}")
            pid = self._start(fresh.after["argv"], fresh.after["listen"])
        except _StartFailed as exc:
            return Result(change.address, change.action, FAILED, str(exc), "server_exited")
        except OSError as exc:
            return Result(change.address, change.action, FAILED, f"{exc.strerror or exc}", "os_error")
        return Result(change.address, change.action, CHANGED, f"started pid {pid} on {fresh.after['listen']}")

    def _start(self, argv: list, listen: str) -> int:
        import psutil

        owner = self.ctx.owner
        with as_owner(owner.uid, owner.gid):
            os.makedirs(self.ctx.path(TSDB_DIR), exist_ok=True)
            log = os.open(self.ctx.path(LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            kwargs = {"user": owner.uid, "group": owner.gid, "extra_groups": []} \
                if os.geteuid() == 0 and owner.uid != 0 else {}
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.facts.owner_home(owner.uid)}
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env,
                                    start_new_session=True, **kwargs)
        finally:
            os.close(log)
        created = psutil.Process(proc.pid).create_time()
        with as_owner(owner.uid, owner.gid):
            atomic_write_json(self.ctx.path(PID_FILE), {"pid": proc.pid, "create_time": created, "argv": argv,
                                                        "listen": listen})
        if not self._ready(listen, proc):
            self._stop(proc.pid)
            raise _StartFailed(f"Prometheus did not answer http://{listen}/-/ready within {READY_S}s "
                               f"(see {self.ctx.path(LOG)})")
        return proc.pid

    def _ready(self, listen: str, proc) -> bool:
        import httpx

        deadline = time.monotonic() + READY_S
        with httpx.Client(timeout=2, trust_env=False) as http:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False
                try:
                    if http.get(f"http://{listen}/-/ready").status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        return False

    def _stop(self, pid: int) -> None:
        from .exec_runtime import _group_alive, _signal_group

        grace = self.desired.data["timeouts"]["teardown_s"]
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child when started in this process
        except ChildProcessError:
            pass
        with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
            try:
                os.unlink(self.ctx.path(PID_FILE))
            except FileNotFoundError:
                pass


class _StartFailed(Exception):
    pass
