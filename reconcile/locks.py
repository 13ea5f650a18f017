"""Locks: whether a lock or marker is still held, and one acquire loop for
the run lock (`lock:apply`) and the per-stage locks.

A lock is a JSON file `{"owner_pid", "started_at", "host", "command"}`
created exclusively (complete before its name appears). It is stale when its
pid is gone or was reused by a later process; it is then reclaimed, but only
if it still names the same holder when we look again.
"""
from __future__ import annotations

import json
import os
import time

from .facts_host import HostFacts, LockFact, flock_held

# A process started this long after a lock's started_at is a different process
# that reused the pid (clock granularity and ISO rounding stay well inside it).
PID_REUSE_SLACK_S = 2.0


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lock_liveness(lock: LockFact, hostname: str) -> tuple[str, str]:
    """('live' | 'stale' | 'foreign', why) for a parsed lock or marker. Pure."""
    if lock.host and lock.host != hostname:
        return "foreign", f"held by pid {lock.owner_pid} on host {lock.host}"
    proc = lock.process
    if not proc.alive:
        return "stale", f"pid {lock.owner_pid} gone"
    started = lock.started_epoch
    if started is not None and proc.create_time and proc.create_time > started + PID_REUSE_SLACK_S:
        return "stale", (f"pid {lock.owner_pid} was reused (process started {_iso(proc.create_time)}, "
                         f"lock taken {lock.started_at})")
    cmd = " ".join(proc.cmdline)[:80]
    return "live", f"held by live pid {lock.owner_pid}" + (f" ({cmd})" if cmd else "") + \
        (f" since {lock.started_at}" if lock.started_at else "")


def lock_info(hostname: str, command: str) -> str:
    from .journal import utc_now_iso

    return json.dumps({"owner_pid": os.getpid(), "started_at": utc_now_iso(), "host": hostname,
                       "command": command}) + "\n"


class LockTimeout(Exception):
    def __init__(self, message: str, lock: LockFact):
        super().__init__(message)
        self.lock = lock


def acquire(path: str, name: str, info: str, hostname: str, timeout_s: float, owner, *,
            on_stale=None, on_wait=None, wait_every_s: float = 30.0) -> bool:
    """Take the lock at `path` (created as `owner`, a context manager factory
    that switches to the storage owner), reclaiming stale ones. Returns
    whether it found the lock taken first (the caller's facts may be old). `on_stale(why)`
    is told before a reclaim, `on_wait(lock, why, held_s)` every `wait_every_s`
    while a live holder keeps it. Raises LockTimeout after `timeout_s`."""
    from .journal import create_exclusive

    start = time.monotonic()
    next_wait = wait_every_s
    waited = False
    while True:
        with owner():
            if create_exclusive(path, info):
                hold(path)
                return waited
        waited = True
        lock = HostFacts().lock_file(name, path)
        if lock.kind == "missing":
            continue
        if lock.kind == "ok":
            state, why = lock_liveness(lock, hostname)
            if state == "stale":
                if on_stale is not None:
                    on_stale(why)
                with owner():
                    again = HostFacts().lock_file(name, path)
                    if again.kind == "ok" and (again.owner_pid, again.started_at) == (lock.owner_pid,
                                                                                       lock.started_at):
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
                continue
        else:
            why = f"unreadable lock ({lock.error})"
            if not held_by_anyone(path):  # garbage, empty, a link: no live holder, reclaim it
                if on_stale is not None:
                    on_stale(f"unreadable and held by no process: {lock.error}")
                with owner():
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                continue
        held = time.monotonic() - start
        if held >= timeout_s:
            raise LockTimeout(why, lock)
        if on_wait is not None and held >= next_wait:
            on_wait(lock, why, held)
            next_wait = held + wait_every_s
        time.sleep(min(0.2, max(0.01, timeout_s - held)))


def release(path: str, name: str, owner) -> None:
    """Remove the lock at `path` if this process holds it."""
    lock = HostFacts().lock_file(name, path)
    if lock.kind == "ok" and lock.owner_pid == os.getpid():
        with owner():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


# Besides its pid in the file, a holder keeps an flock on its lock for as
# long as it runs (the kernel drops it when the process dies, kill -9
# included). That answers "does anyone hold it?" for a lock whose content
# cannot be read.
_HELD: dict = {}


def hold(path: str) -> None:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return
    _HELD[path] = fd


def held_by_anyone(path: str) -> bool:
    """Whether a live process holds the flock of the lock at `path` (no file,
    a link, a FIFO: nobody)."""
    return bool(flock_held(path))
