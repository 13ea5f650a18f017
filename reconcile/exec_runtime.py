"""The runtime seam: where stage processes run.

A `Runtime` starts an explicit argv (never a shell) with an explicit
environment, as the storage owner, in its own process group, streams its
output line by line, and tears the whole group down: SIGTERM, a grace period,
SIGKILL, then confirms every process of the group is gone.

`LocalRuntime` runs on this host. A container runtime implements the same
methods over `docker exec`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Callable, Protocol

from .facts_runtime import PASSTHROUGH_ENV, owner_environment  # noqa: F401 - one definition, re-exported


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


class Runtime(Protocol):
    kind: str
    python: str

    def spawn(self, argv: list, env: dict, on_line: Callable[[str], None], cwd: str | None = None) -> Process: ...

    def teardown(self, proc: Process, grace_s: float) -> tuple[bool, str]: ...

    def base_env(self) -> dict: ...


class LocalProcess:
    """A process group started by LocalRuntime, with its output pump."""

    def __init__(self, popen: subprocess.Popen, on_line: Callable[[str], None]):
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session: the child leads its own group
        self._pump = threading.Thread(target=self._read, args=(on_line,), daemon=True)
        self._pump.start()

    def _read(self, on_line) -> None:
        for raw in iter(self.popen.stdout.readline, b""):
            try:
                on_line(raw.decode("utf-8", errors="replace").rstrip("\n"))
            except Exception:  # noqa: BLE001 - keep draining: a full pipe would stall the process
                pass
        self.popen.stdout.close()

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def drain(self, timeout: float = 5.0) -> None:
        self._pump.join(timeout)


class LocalRuntime:
    """Processes on this host, as the storage owner."""

    kind = "local"

    def __init__(self, python: str, extra_env: dict, uid: int, gid: int, home: str, environ: dict | None = None):
        self.python = python
        self.extra_env = dict(extra_env)
        self.uid, self.gid, self.home = uid, gid, home
        self.environ = os.environ if environ is None else environ

    def base_env(self) -> dict:
        return owner_environment(self.environ, self.home, self.extra_env)

    def spawn(self, argv: list, env: dict, on_line: Callable[[str], None], cwd: str | None = None) -> LocalProcess:
        kwargs = {}
        if os.geteuid() == 0 and self.uid != 0:
            kwargs = {"user": self.uid, "group": self.gid, "extra_groups": []}
        popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        return LocalProcess(popen, on_line)

    def teardown(self, proc: LocalProcess, grace_s: float) -> tuple[bool, str]:
        """SIGTERM the group, wait `grace_s`, SIGKILL, confirm it is gone.
        Returns (gone, what happened)."""
        steps = []
        if _group_alive(proc.pgid) or proc.poll() is None:
            _signal_group(proc.pgid, signal.SIGTERM)
            steps.append("SIGTERM")
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and (_group_alive(proc.pgid) or proc.poll() is None):
                proc.wait(0.1)
            if _group_alive(proc.pgid) or proc.poll() is None:
                _signal_group(proc.pgid, signal.SIGKILL)
                steps.append(f"SIGKILL after {grace_s:g}s")
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and (_group_alive(proc.pgid) or proc.poll() is None):
                    proc.wait(0.1)
        proc.drain()
        gone = proc.poll() is not None and not _group_alive(proc.pgid)
        return gone, (", ".join(steps) or "already exited") + ("" if gone else "; processes remain")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group?"""
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False
