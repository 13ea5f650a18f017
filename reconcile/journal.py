"""Journal: atomic files and the session log.

Every file a consumer reads is written atomically: a temp file in the same
directory, fsync, rename over the target, fsync the directory. The temp name
never ends in the target's suffix, so a node_exporter textfile collector
(which reads only `*.prom`) or a JSON reader never sees a half-written file.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(prefix: str = "run") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{os.urandom(4).hex()}"


def fsync_dir(directory: str) -> None:
    """fsync a directory (after a rename in it); errors are ignored."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMP_SUFFIXES = (".tmp", ".new")


def temp_name(path: str, suffix: str) -> str:
    """`.<name>.<pid>.<random>.<suffix>` beside `path`: the pid lets a later
    run tell a crashed writer's leftover from a live one's."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    return os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.{suffix}")


def _write_synced_temp(path: str, data: bytes | str, mode: int, suffix: str) -> tuple[str, str]:
    """Write `data` to a new hidden temp file beside `path`, fsynced; (temp,
    dir). Created with O_EXCL|O_NOFOLLOW under an unpredictable name: a link
    or file planted there by whoever can write the directory is never
    followed or truncated (root writes plan files and metrics this way)."""
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.dirname(os.path.abspath(path)) or "."
    tmp = temp_name(path, suffix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp, directory


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: str, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically (same-directory temp + rename)."""
    tmp, directory = _write_synced_temp(path, data, mode, "tmp")
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def atomic_write_json(path: str, value, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(value, indent=2, sort_keys=False) + "\n", mode)


def create_exclusive(path: str, data: bytes | str, mode: int = 0o644) -> bool:
    """Create `path` with `data` only if it does not exist; False if it does.

    The content is complete before the name appears (temp file + link), so a
    reader never sees a half-written lock.
    """
    tmp, directory = _write_synced_temp(path, data, mode, "new")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(tmp)
    fsync_dir(directory)
    return True


class SessionLog:
    """Append-only per-run log (the seeds' single session log), safe to write
    from the threads that pump subprocess output."""

    def __init__(self, path: str, scrub: set | None = None):
        self.path = path
        self._fh = None
        self.scrub = sorted(scrub or (), key=len, reverse=True)  # secrets never written in clear
        self._early: list = []
        self.failed = ""  # why a line could not be written (the first time)
        import threading

        self._lock = threading.Lock()

    def clean(self, line: str) -> str:
        for secret in self.scrub:
            if secret in line:
                line = line.replace(secret, "<redacted>")
        return line

    def open(self) -> "SessionLog":
        """Open for appending (the caller checks the directory is sglprep's own
        and switches to the storage owner); lines written before are flushed."""
        if self._fh is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         0o644)
            self._fh = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            with self._lock:
                for line in self._early:
                    self._fh.write(line + "\n")
                self._early.clear()
        return self

    def write(self, line: str) -> None:
        line = self.clean(line).rstrip("\n")
        with self._lock:
            if self._fh is None:  # kept until open(): never written to a path nobody checked
                self._early.append(line)
                del self._early[:-1000]
            else:
                try:
                    self._fh.write(line + "\n")
                except OSError as exc:  # a full disk must not stop the run; the report says so
                    self.failed = self.failed or f"{exc.strerror or exc}"

    def event(self, kind: str, **fields) -> None:
        self.write(f"{utc_now_iso()} {kind} " + json.dumps(fields, sort_keys=True, default=str))

    def optimize(self, name: str, phase: str, human: str = "", **fields) -> None:
        """`[OPTIMIZE name] …` for people and `OPTIMIZE_JSON {…}` for tools."""
        if human:
            self.write(f"[OPTIMIZE {name}] {human}")
        doc = {"name": name, "phase": phase, "ts": utc_now_iso()}
        doc.update(fields)
        self.write("OPTIMIZE_JSON " + json.dumps(doc, sort_keys=False, default=str))

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()
                except OSError as exc:
                    self.failed = self.failed or f"{exc.strerror or exc}"
                self._fh = None


def write_run_file(run_dir: str, rel: str, value) -> str:
    """Atomically write JSON `value` at run_dir/rel (stage files, prep_result)."""
    path = os.path.join(run_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, value)
    return path
