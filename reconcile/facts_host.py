"""Facts about the local host, gathered read-only, lazily, once per run.

Every fact is a small immutable record (a NamedTuple: cheap to define, which
keeps `sglprep plan` fast) with an explicit `kind`; nothing here
returns None for one case and False or a dict for another. Gathering never
writes; the only processes it starts are the read-only probes (the runtime
probe, SGLang's argument parser, `ninja -n`).

What is lazy, honestly: `HostFacts` gathers a fact the first time a diff
asks for it and memoizes it, so a plan reads only what its resources need
(a converged storage-only plan never starts the runtime probe or imports the
docker SDK). Apply re-checks each change just before acting against
`fresh()` facts: the filesystem, processes and ports are read again, while
the runtime probe and the flag check are carried over, so one command
probes the runtime at most once.
"""
from __future__ import annotations

import os
import stat as stat_mod
from typing import NamedTuple

# ----------------------------------------------------------------- fact types


class Identity(NamedTuple):
    uid: int
    gid: int
    is_root: bool
    sudo_uid: int | None  # SUDO_UID/SUDO_GID from the environment, when numeric
    sudo_gid: int | None
    hostname: str
    home: str  # $HOME of the invoking process
    user: str = ""  # the invoking user's name (the sudo caller's under sudo), for `{user}` in storage.root


class DirFact(NamedTuple):
    path: str
    kind: str  # missing | dir | symlink | not_dir
    uid: int = -1
    gid: int = -1
    mode: int = 0  # permission bits

    def writable_by(self, uid: int, gid: int) -> bool:
        """Whether uid:gid may create entries here (owner/group/other bits)."""
        if self.kind != "dir":
            return False
        if uid == 0:
            return True
        if uid == self.uid:
            bits = stat_mod.S_IWUSR | stat_mod.S_IXUSR
        elif gid == self.gid:
            bits = stat_mod.S_IWGRP | stat_mod.S_IXGRP
        else:
            bits = stat_mod.S_IWOTH | stat_mod.S_IXOTH
        return self.mode & bits == bits

    def searchable_by(self, uid: int, gid: int) -> bool:
        """Whether uid:gid may traverse this directory (x bit)."""
        if self.kind != "dir" or uid == 0:
            return self.kind == "dir"
        if uid == self.uid:
            return bool(self.mode & stat_mod.S_IXUSR)
        if gid == self.gid:
            return bool(self.mode & stat_mod.S_IXGRP)
        return bool(self.mode & stat_mod.S_IXOTH)


class FileFact(NamedTuple):
    path: str
    kind: str  # missing | file | not_file | unreadable
    text: str = ""
    uid: int = -1
    gid: int = -1


class ProcFact(NamedTuple):
    pid: int
    alive: bool
    create_time: float = 0.0  # epoch seconds
    user: str = ""
    cmdline: tuple = ()


class LockFact(NamedTuple):
    """A lock file (`profiles/.locks/<name>.lock`) or marker (`.in_progress/<stage>.json`)."""

    name: str
    path: str
    kind: str  # ok | unparseable
    owner_pid: int = 0
    started_at: str = ""
    host: str = ""
    command: str = ""
    process: ProcFact = ProcFact(pid=0, alive=False)
    error: str = ""
    processes: tuple = ()  # markers: (pid, pgid, create_time) of what the stage started

    @property
    def started_epoch(self) -> float | None:
        return parse_iso(self.started_at)


class PointerFact(NamedTuple):
    path: str
    kind: str  # missing | ok | unparseable
    manifest_container: str = ""
    manifest_host: str = ""
    manifest_exists: bool = False
    manifest: dict = {}  # never mutated
    error: str = ""


class LastApplyFact(NamedTuple):
    """`telemetry/sglprep/last-apply.json`: what the last apply left."""

    kind: str  # missing | ok | unparseable
    applied_at: float = 0.0
    intents: dict = {}  # address -> intent (the desired side of each resource)
    result_json: str = ""  # the last prep_result.json an apply wrote
    exit_code: int | None = None  # the last apply's exit code
    last_success_at: float = 0.0  # the last apply that exited 0


class ServiceFact(NamedTuple):
    """A service sglprep started (its pid file), checked against the process table."""

    kind: str  # running | stopped
    pid: int = 0
    argv: tuple = ()
    binary: str = ""  # where the desired binary was found ("" = nowhere)


class TreeStats(NamedTuple):
    files: int
    bytes: int
    newest_mtime: float  # 0.0 for an empty or missing tree


def tree_stats(path: str) -> TreeStats:
    """Files, bytes and newest mtime under `path`: one os.scandir walk, no
    symlinks followed."""
    return tree_scan(path)[0]


def tree_scan(path: str, keep_newest: int = 0) -> tuple:
    """(TreeStats, the `keep_newest` newest files as (mtime, path, size),
    newest first): one walk."""
    import heapq

    from .facts_artifacts import walk_entries

    count = size = 0
    newest = 0.0
    heap: list = []
    for entry in walk_entries(path):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        count += 1
        size += st.st_size
        newest = max(newest, st.st_mtime)
        if keep_newest:
            item = (st.st_mtime, entry.path, st.st_size)
            if len(heap) < keep_newest:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    return TreeStats(count, size, newest), sorted(heap, reverse=True)


class PortFact(NamedTuple):
    port: int
    state: str  # free | busy
    pid: int = 0  # 0 when the holder cannot be seen
    user: str = ""
    cmdline: tuple = ()


class DiskFact(NamedTuple):
    path: str  # the existing directory that was measured
    free_bytes: int
    total_bytes: int


def linked_component(root: str, rel: str) -> str:
    """The first existing path from `root` down to `root/rel` that is a
    symbolic link ("" if none): sglprep writes nothing through one, so a
    link the owner planted in the storage tree cannot aim its writes (or
    root's) outside it. `root` itself may be a link (the user's choice)."""
    path = root.rstrip("/")
    for part in [p for p in rel.split("/") if p]:
        path = f"{path}/{part}"
        try:
            st = os.lstat(path)
        except OSError:
            return ""
        if stat_mod.S_ISLNK(st.st_mode):
            return path
    return ""


def read_bounded(path: str, limit: int = 1 << 20, follow: bool = False) -> tuple[str, bytes, str]:
    """(missing | ok | unreadable, content, error) of a small file sglprep
    reads as a fact. Never follows a link (unless `follow`: a model's
    config.json in a Hugging Face snapshot is one), never blocks on a FIFO or
    device, never reads more than `limit` bytes: a file the owner planted
    cannot make root disclose, hang or run out of memory."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return "missing", b"", ""
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the path is a symbolic link
            return "unreadable", b"", "a symbolic link (not followed)"
        return "unreadable", b"", exc.strerror or str(exc)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            return "unreadable", b"", "not a regular file"
        if st.st_size > limit:
            return "unreadable", b"", f"larger than {limit} bytes"
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return "unreadable", b"", f"larger than {limit} bytes"
        return "ok", b"".join(chunks), ""
    except OSError as exc:
        return "unreadable", b"", exc.strerror or str(exc)
    finally:
        os.close(fd)


def read_json(path: str, limit: int = 16 << 20, follow: bool = False) -> tuple[str, object, str]:
    """(missing | ok | unparseable, value, error) of a JSON fact file, read
    with `read_bounded`."""
    import json

    kind, data, error = read_bounded(path, limit, follow)
    if kind == "missing":
        return "missing", None, ""
    if kind != "ok":
        return "unparseable", None, error
    try:
        return "ok", json.loads(data), ""
    except (ValueError, RecursionError) as exc:
        return "unparseable", None, str(exc)[:200]


_CONTROL = dict.fromkeys(range(32)) | {127: None}


def printable(text) -> str:
    """A string from a file the owner controls, safe for a terminal and a log line."""
    return str(text).translate(_CONTROL)[:500]


def parse_iso(text: str) -> float | None:
    if not text:
        return None
    from datetime import datetime, timezone

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


# ------------------------------------------------------------------ gathering


def flock_held(path: str) -> bool | None:
    """Whether a live process holds the flock of the lock file at `path`
    (None: no such file). A test lock, released at once; the file is not
    changed. A link, a FIFO or anything but a regular file is held by
    nobody (sglprep never makes one); opening never blocks."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class HostFacts:
    """Lazy, memoized, read-only view of the local host."""

    def __init__(self, environ: dict | None = None):
        self._env = os.environ if environ is None else environ
        self._memo: dict = {}

    # Facts that stay true for one command: the runtime's versions and GPUs,
    # and its parser's verdict on a given argv.
    CARRIED = ("runtime", "flags")

    def fresh(self) -> "HostFacts":
        """A new view of the host that re-reads everything but the runtime
        probe and flag checks this one already made."""
        out = HostFacts(self._env)
        out._memo = {k: v for k, v in self._memo.items() if k[0] in self.CARRIED}
        return out

    @property
    def environ(self):
        return self._env

    def _cached(self, key, compute):
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = compute()
            return value

    # identity -------------------------------------------------------------
    def identity(self) -> Identity:
        return self._cached(("identity",), self._identity)

    def _identity(self) -> Identity:
        def num(name):
            value = self._env.get(name, "")
            return int(value) if value.isdigit() else None

        uid = os.geteuid()
        sudo_uid = num("SUDO_UID")
        try:
            import pwd

            user = pwd.getpwuid(sudo_uid if uid == 0 and sudo_uid is not None else uid).pw_name
        except (KeyError, ImportError):
            user = str(sudo_uid if uid == 0 and sudo_uid is not None else uid)
        return Identity(uid=uid, gid=os.getegid(), is_root=uid == 0, sudo_uid=sudo_uid, user=user,
                        sudo_gid=num("SUDO_GID"), hostname=os.uname().nodename,
                        home=self._env.get("HOME", ""))

    def owner_home(self, uid: int) -> str:
        """HOME for processes run as `uid`: its passwd home when sglprep runs
        as root for it, else the invoker's own HOME; /tmp if neither exists."""
        home = self.home_of(uid) if uid != os.geteuid() else self.identity().home
        return home if home and os.path.isdir(home) else "/tmp"

    def home_of(self, uid: int) -> str:
        def compute():
            import pwd

            try:
                return pwd.getpwuid(uid).pw_dir
            except KeyError:
                return ""
        return self._cached(("home", uid), compute)

    # filesystem -----------------------------------------------------------
    def directory(self, path: str, follow: bool = False) -> DirFact:
        """lstat of `path`; with follow=True, stat (symlinks resolved)."""
        return self._cached(("dir", path, follow), lambda: _dir_fact(path, follow))

    def file(self, path: str) -> FileFact:
        return self._cached(("file", path), lambda: _file_fact(path))

    def listdir(self, path: str) -> tuple:
        def compute():
            try:
                return tuple(sorted(os.listdir(path)))
            except (FileNotFoundError, NotADirectoryError):
                return ()
            except PermissionError:
                return ()
        return self._cached(("listdir", path), compute)

    def lock_file(self, name: str, path: str) -> LockFact:
        return self._cached(("lock", path), lambda: self._lock_fact(name, path))

    def _lock_fact(self, name: str, path: str) -> LockFact:
        kind, data, error = read_json(path, 65536)
        if kind == "missing":
            return LockFact(name=name, path=path, kind="missing")
        pid = data.get("owner_pid") if isinstance(data, dict) else None
        if kind == "ok" and not isinstance(data, dict):
            error = "not a JSON object"
        elif kind == "ok" and (isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 1 << 31):
            error = "owner_pid is not a process id"
        if error or kind != "ok":
            return LockFact(name=name, path=path, kind="unparseable", error=printable(error))
        processes = []
        for item in data.get("processes") or () if isinstance(data.get("processes"), list) else ():
            if isinstance(item, dict) and all(isinstance(item.get(k), int) and not isinstance(item.get(k), bool)
                                              and 0 < item[k] < 1 << 31 for k in ("pid", "pgid")) \
                    and isinstance(item.get("create_time"), (int, float)):
                processes.append((item["pid"], item["pgid"], float(item["create_time"])))
        return LockFact(name=name, path=path, kind="ok", owner_pid=pid,
                        started_at=printable(data.get("started_at", ""))[:40], host=printable(data.get("host", "")),
                        command=printable(data.get("command", "")), process=self.process(pid),
                        processes=tuple(processes[:64]))

    def process(self, pid: int) -> ProcFact:
        return self._cached(("proc", pid), lambda: _proc_fact(pid))

    def pointer(self, path: str, container_root: str, host_root: str) -> PointerFact:
        return self._cached(("pointer", path), lambda: _pointer_fact(path, container_root, host_root))

    def service(self, pid_file: str, binary: str, path_env: str = ""):
        """A service sglprep started (its pid file: pid, start time, argv),
        checked against the process table, and where `binary` is found."""
        import shutil

        def compute():
            found = binary if os.path.isabs(binary) and os.access(binary, os.X_OK) else (
                shutil.which(binary, path=path_env or self._env.get("PATH")) or "")
            kind, data, _ = read_json(pid_file, 65536)
            if kind != "ok" or not isinstance(data, dict) or not isinstance(data.get("pid"), int):
                return ServiceFact("stopped", binary=found)
            proc = self.process(data["pid"])
            created = data.get("create_time")
            if not proc.alive or not isinstance(created, (int, float)) or abs(proc.create_time - created) > 1.0:
                return ServiceFact("stopped", binary=found)
            argv = tuple(str(a) for a in data.get("argv") or ())
            return ServiceFact("running", pid=data["pid"], argv=argv, binary=found)
        return self._cached(("service", pid_file, binary, path_env), compute)

    def bundle(self, settings: dict, file_name: str, signature: dict):
        """Whether the bundle registry has this stage's bundle (facts_registry)."""
        import json

        from .facts_registry import bundle_fact

        key = ("bundle", json.dumps(settings, sort_keys=True), file_name, json.dumps(signature, sort_keys=True,
                                                                                     default=str))
        return self._cached(key, lambda: bundle_fact(settings, file_name, signature, self._env))

    def lock_held(self, path: str) -> bool | None:
        """Whether a live process holds the flock of the lock at `path` (None:
        no lock file). A test lock, released at once; the file is not changed."""
        return self._cached(("lock_held", path), lambda: flock_held(path))

    def temp_leftovers(self, dirs: tuple) -> tuple:
        """(path, writer pid) of every temp file sglprep's atomic writes leave
        (`.<name>.<pid>[.<random>].tmp|.new`) in `dirs` (no recursion)."""
        out = []
        for directory in dirs:
            for entry in self.listdir(directory):
                if not entry.startswith(".") or not entry.endswith((".tmp", ".new")):
                    continue
                parts = entry.rsplit(".", 3)
                pid = next((int(p) for p in parts[1:3] if p.isdigit()), 0)
                if pid:
                    out.append((os.path.join(directory, entry), pid))
        return tuple(out)

    def port(self, port: int) -> PortFact:
        return self._cached(("port", port), lambda: _port_fact(port))

    # runtime and stage facts (see facts_runtime, facts_stages) ---------------
    def _prober(self, extra_env: dict, uid, gid, container: str):
        """Probes run in the runtime: this host, or `container` via docker exec."""
        if container:
            from .facts_docker import docker_prober

            return docker_prober(container, uid, gid, extra_env, self._env)
        from .facts_runtime import local_prober, owner_environment

        home = self.owner_home(uid if uid is not None else os.geteuid())
        return local_prober(owner_environment(self._env, home, extra_env), uid, gid)

    def runtime(self, python: str, extra_env: dict, uid: int | None = None, gid: int | None = None,
                container: str = ""):
        from .facts_runtime import probe_runtime

        key = ("runtime", container, python, tuple(sorted(extra_env.items())), uid, gid)
        return self._cached(key, lambda: probe_runtime(python, self._prober(extra_env, uid, gid, container)))

    def server_flags(self, python: str, extra_env: dict, argvs: dict, uid: int | None = None,
                     gid: int | None = None, container: str = "") -> dict:
        import json

        from .facts_stages import validate_server_flags

        key = ("flags", container, python, json.dumps(argvs, sort_keys=True), uid, gid)
        return self._cached(key, lambda: validate_server_flags(
            python, self._prober(extra_env, uid, gid, container), argvs))

    def engine(self):
        from .facts_docker import engine_fact

        return self._cached(("engine",), lambda: engine_fact(self._env))

    def container(self, name: str):
        from .facts_docker import container_fact

        return self._cached(("container", name), lambda: container_fact(self._env, name))

    def image(self, ref: str):
        from .facts_docker import image_fact

        return self._cached(("image", ref), lambda: image_fact(self._env, ref))

    def signature(self, path: str):
        from .facts_stages import signature_fact

        return self._cached(("signature", path), lambda: signature_fact(path))

    def model(self, config_path: str):
        from .facts_stages import model_fact

        return self._cached(("model", config_path), lambda: model_fact(config_path))

    def flashinfer_modules(self, cached_ops: str, runtime_cached_ops: str, ninja: str | None,
                           uid: int | None = None, gid: int | None = None, extra_env: dict | None = None) -> tuple:
        """FlashInfer's module builds; `ninja -n` runs as uid:gid with the
        owner's environment (the runtime's ninja is the owner's binary)."""
        from .facts_stages import flashinfer_modules

        prober = self._prober(extra_env or {}, uid, gid, "") if ninja else None
        return self._cached(("flashinfer", cached_ops, runtime_cached_ops, ninja, uid),
                            lambda: flashinfer_modules(cached_ops, runtime_cached_ops, ninja, prober))

    def artifacts(self, manifest_path: str, root: str, full: bool = False):
        """A stage's artifact manifest checked against the files (facts_artifacts)."""
        from .facts_artifacts import check

        return self._cached(("artifacts", manifest_path, full), lambda: check(manifest_path, root, full))

    def last_apply(self, path: str) -> LastApplyFact:
        def compute():
            kind, data, _ = read_json(path, 64 << 20)
            if kind != "ok":
                return LastApplyFact(kind=kind)
            try:
                return LastApplyFact(kind="ok", applied_at=float(parse_iso(str(data.get("applied_at", ""))) or 0.0),
                                     intents=dict(data.get("intents") or {}),
                                     result_json=str(data.get("result_json") or ""),
                                     exit_code=data["exit_code"] if isinstance(data.get("exit_code"), int) else None,
                                     last_success_at=float(parse_iso(str(data.get("last_success_at", ""))) or 0.0))
            except (ValueError, TypeError, AttributeError):
                return LastApplyFact(kind="unparseable")
        return self._cached(("last_apply", path), compute)

    def flashinfer_build_locks(self, cached_ops: str) -> tuple:
        from .facts_stages import flashinfer_build_locks

        return self._cached(("fi-locks", cached_ops), lambda: flashinfer_build_locks(cached_ops))

    def free_disk(self, path: str) -> DiskFact:
        def compute():
            probe = path
            while not os.path.exists(probe) and os.path.dirname(probe) != probe:
                probe = os.path.dirname(probe)
            st = os.statvfs(probe)
            return DiskFact(path=str(probe), free_bytes=st.f_bavail * st.f_frsize,
                            total_bytes=st.f_blocks * st.f_frsize)
        return self._cached(("disk", path), compute)


def _dir_fact(path: str, follow: bool = False) -> DirFact:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return DirFact(path=path, kind="missing")
    except NotADirectoryError:
        return DirFact(path=path, kind="missing")
    if stat_mod.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat_mod.S_ISDIR(st.st_mode):
        kind = "dir"
    else:
        kind = "not_dir"
    return DirFact(path=path, kind=kind, uid=st.st_uid, gid=st.st_gid, mode=stat_mod.S_IMODE(st.st_mode))


def _file_fact(path: str) -> FileFact:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return FileFact(path=path, kind="missing")
    if not stat_mod.S_ISREG(st.st_mode):
        return FileFact(path=path, kind="not_file", uid=st.st_uid, gid=st.st_gid)
    kind, data, _ = read_bounded(path, 4 << 20)
    if kind != "ok":
        return FileFact(path=path, kind="not_file" if kind == "missing" else "unreadable", uid=st.st_uid,
                        gid=st.st_gid)
    return FileFact(path=path, kind="file", text=data.decode("utf-8", errors="replace"), uid=st.st_uid,
                    gid=st.st_gid)


def _proc_fact(pid: int) -> ProcFact:
    if pid <= 0:
        return ProcFact(pid=pid, alive=False)
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return ProcFact(pid=pid, alive=False)
            create_time = proc.create_time()
            try:
                user = proc.username()
            except (psutil.AccessDenied, KeyError):
                user = ""
            try:
                cmdline = tuple(proc.cmdline())
            except psutil.AccessDenied:
                cmdline = ()
        return ProcFact(pid=pid, alive=True, create_time=create_time, user=user, cmdline=cmdline)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ProcFact(pid=pid, alive=False)
    except psutil.AccessDenied:
        return ProcFact(pid=pid, alive=True)


def _pointer_fact(path: str, container_root: str, host_root: str) -> PointerFact:
    kind, raw, error = read_bounded(path, 65536)
    if kind == "missing":
        return PointerFact(path=path, kind="missing")
    if kind != "ok":
        return PointerFact(path=path, kind="unparseable", error=error)
    text = raw.decode("utf-8", errors="replace")
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return PointerFact(path=path, kind="unparseable", error="a line without '='")
        values[key.strip()] = value.strip().strip('"').strip("'")
    container = values.get("CONTAINER_RUN_META_JSON", "")
    host = values.get("CONTAINER_RUN_META_JSON_HOST", "")
    if not container and not host:
        return PointerFact(path=path, kind="unparseable", error="no CONTAINER_RUN_META_JSON line")
    # The manifest is looked for on the host, and only under the storage's
    # telemetry dir: its host path, else its container path rebased from the
    # container's /telemetry to ours. A pointer cannot make root read elsewhere.
    inside = host_root.rstrip("/") + "/"
    candidates = [host] if host.startswith(inside) and ".." not in host.split("/") else []
    if container.startswith(container_root.rstrip("/") + "/") and ".." not in container.split("/"):
        candidates.append(host_root.rstrip("/") + container[len(container_root.rstrip("/")):])
    manifest: dict = {}
    exists = False
    for cand in candidates:
        found, loaded, _ = read_json(cand, 4 << 20)
        if found == "ok":
            manifest = loaded if isinstance(loaded, dict) else {}
            exists = True
            break
    return PointerFact(path=path, kind="ok", manifest_container=printable(container), manifest_host=printable(host),
                       manifest_exists=exists, manifest=manifest)


def _listening_ports(path: str, want: int) -> bool:
    try:
        with open(path, encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                parts = line.split(None, 4)
                if len(parts) < 4 or parts[3] != "0A":  # 0A = LISTEN
                    continue
                if int(parts[1].rsplit(":", 1)[1], 16) == want:
                    return True
    except OSError:
        return False
    return False


def _port_fact(port: int) -> PortFact:
    """Is 127.0.0.1:port taken? Asked the way the warm-up server will find
    out: a bind with SO_REUSEADDR (as uvicorn sets it), closed at once; no
    connection is made and nothing listens. /proc/net/tcp is the fallback."""
    import errno
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        busy = False
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            busy = True
        else:
            busy = _listening_ports("/proc/net/tcp", port) or _listening_ports("/proc/net/tcp6", port)
    finally:
        sock.close()
    if not busy:
        return PortFact(port=port, state="free")
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = _proc_fact(conn.pid)
                return PortFact(port=port, state="busy", pid=conn.pid, user=proc.user, cmdline=proc.cmdline)
    except psutil.AccessDenied:
        pass
    return PortFact(port=port, state="busy")
