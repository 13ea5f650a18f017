"""Facts from fixtures: the same interface as `HostFacts`, backed by dicts.

Unlisted directories and files are missing, unlisted ports are free, and the
disk has plenty of room, so a fixture only names what differs from an empty
host.
"""
from __future__ import annotations

from reconcile.facts_host import (DirFact, DiskFact, FileFact, Identity, LockFact, PointerFact, PortFact,
                                  ProcFact)

ROOT = "/srv/sgl"
DEFAULT_IDENTITY = Identity(uid=1000, gid=1000, is_root=False, sudo_uid=None, sudo_gid=None,
                            hostname="gpu-01", home="/home/u")


class FakeFacts:
    def __init__(self, *, identity: Identity = DEFAULT_IDENTITY, dirs: dict | None = None,
                 files: dict | None = None, locks: dict | None = None, markers: dict | None = None,
                 pointer: PointerFact | None = None, ports: dict | None = None, free_bytes: int = 100 << 30,
                 homes: dict | None = None, root: str = ROOT, runtime=None, flags: dict | None = None,
                 signatures: dict | None = None, model=None, flashinfer: tuple = (), last_apply=None,
                 engine=None, containers: dict | None = None, images: dict | None = None,
                 artifacts: dict | None = None, temps: tuple = (), service=None):
        self._identity = identity
        self.root = root
        self.dirs = dirs or {}  # rel -> DirFact (path filled in)
        self.files = files or {}  # rel -> text
        self.locks = locks or {}  # name -> LockFact
        self.markers = markers or {}  # stage -> LockFact
        self._pointer = pointer
        self.ports = ports or {}  # port -> PortFact
        self.free_bytes = free_bytes
        self.homes = homes or {}
        self._runtime = runtime
        self.flags = flags or {}  # stage -> parser error ("" = accepted)
        self.signatures = signatures or {}  # rel -> SignatureFact
        self._model = model
        self._flashinfer = flashinfer
        self._last_apply = last_apply
        self._engine = engine
        self._temps = temps  # (path, pid) of leftover temp files
        self._service = service  # the Prometheus sglprep runs (ServiceFact)
        self._artifacts = artifacts or {}  # manifest rel -> ArtifactFact (default: whole)
        self.containers = containers or {}  # name -> ContainerFact
        self.images = images or {}  # ref -> ImageFact
        self.asked: list = []

    def fresh(self):
        return self

    @property
    def environ(self) -> dict:
        return {}

    def _rel(self, path: str) -> str | None:
        if path == self.root:
            return ""
        prefix = self.root.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else None

    def identity(self) -> Identity:
        return self._identity

    def home_of(self, uid: int) -> str:
        return self.homes.get(uid, "")

    def owner_home(self, uid: int) -> str:
        return self.homes.get(uid, "/tmp")

    def directory(self, path: str, follow: bool = False) -> DirFact:
        self.asked.append(("directory", path))
        rel = self._rel(path)
        fact = self.dirs.get(rel) if rel is not None else self.dirs.get(path)
        if fact is None and follow and (rel is None or rel == "") and self.root.startswith(path):
            return DirFact(path=path, kind="dir", uid=0, gid=0, mode=0o755)  # ancestors: a normal /srv
        if fact is None:
            return DirFact(path=path, kind="missing")
        return fact._replace(path=path)

    def file(self, path: str) -> FileFact:
        rel = self._rel(path)
        text = self.files.get(rel)
        if text is None:
            return FileFact(path=path, kind="missing")
        return FileFact(path=path, kind="file", text=text, uid=1000, gid=1000)

    def listdir(self, path: str) -> tuple:
        rel = self._rel(path)
        if rel == "profiles/.locks":
            return tuple(sorted(f"{n}.lock" for n in self.locks))
        if rel == "profiles/.in_progress":
            return tuple(sorted(f"{n}.json" for n in self.markers))
        return ()

    def lock_file(self, name: str, path: str) -> LockFact:
        table = self.markers if path.endswith(".json") else self.locks
        fact = table.get(name)
        if fact is None:
            return LockFact(name=name, path=path, kind="missing")
        return fact._replace(name=name, path=path)

    def process(self, pid: int) -> ProcFact:
        return ProcFact(pid=pid, alive=False)

    def pointer(self, path: str, container_root: str, host_root: str) -> PointerFact:
        return (self._pointer or PointerFact(path=path, kind="missing"))._replace(path=path)

    def service(self, pid_file: str, binary: str, path_env: str = ""):
        from reconcile.facts_host import ServiceFact

        return self._service or ServiceFact("stopped", binary=f"/usr/bin/{binary}")

    def bundle(self, settings: dict, file_name: str, signature: dict):
        from reconcile.facts_registry import BundleFact

        return BundleFact("disabled")

    def lock_held(self, path: str):
        return None

    def temp_leftovers(self, dirs: tuple) -> tuple:
        return tuple(self._temps)

    def port(self, port: int) -> PortFact:
        return self.ports.get(port, PortFact(port=port, state="free"))

    def runtime(self, python: str, extra_env: dict, uid=None, gid=None, container=""):
        self.asked.append(("runtime", python))
        return self._runtime

    def server_flags(self, python: str, extra_env: dict, argvs: dict, uid=None, gid=None, container=""):
        """`flags`: stage -> the parser's error line; `"*"`: the parser could not run (its cause)."""
        from reconcile.facts_stages import FlagCheck

        self.asked.append(("server_flags", tuple(sorted(argvs))))
        if "*" in self.flags:
            return FlagCheck(ran=False, cause=self.flags["*"])
        return FlagCheck(ran=True, rejected={s: self.flags[s] for s in argvs if self.flags.get(s)})

    def signature(self, path: str):
        from reconcile.facts_stages import SignatureFact

        return self.signatures.get(self._rel(path), SignatureFact(path=path, kind="missing"))._replace(path=path)

    def model(self, config_path: str):
        from reconcile.facts_stages import ModelFact

        return self._model or ModelFact(path=config_path, kind="ok", max_context=262144)

    def flashinfer_modules(self, cached_ops: str, runtime_cached_ops: str, ninja, uid=None, gid=None,
                           extra_env=None) -> tuple:
        return self._flashinfer

    def artifacts(self, manifest_path: str, root: str, full: bool = False):
        from reconcile.facts_artifacts import ArtifactFact

        self.asked.append(("artifacts", manifest_path, full))
        rel = self._rel(manifest_path)
        return self._artifacts.get(rel) or ArtifactFact(path=manifest_path, kind="ok", files=1)

    def last_apply(self, path: str):
        from reconcile.facts_host import LastApplyFact

        return self._last_apply or LastApplyFact(kind="missing")

    def flashinfer_build_locks(self, cached_ops: str) -> tuple:
        return ()

    def engine(self):
        from reconcile.facts_docker import EngineFact

        self.asked.append(("engine",))
        return self._engine or EngineFact(reachable=True, endpoint="unix:///var/run/docker.sock", version="28.2.2")

    def container(self, name: str):
        from reconcile.facts_docker import ContainerFact

        return self.containers.get(name) or ContainerFact(name=name, kind="missing")

    def image(self, ref: str):
        from reconcile.facts_docker import ImageFact

        return self.images.get(ref) or ImageFact(ref=ref, kind="present", id="sha256:" + "1" * 64)

    def free_disk(self, path: str) -> DiskFact:
        return DiskFact(path=self.root, free_bytes=self.free_bytes, total_bytes=500 << 30)


def dir_ok(uid: int = 1000, gid: int = 1000, mode: int = 0o755) -> DirFact:
    return DirFact(path="", kind="dir", uid=uid, gid=gid, mode=mode)


def converged_dirs(uid: int = 1000, gid: int = 1000) -> dict:
    from reconcile.state_layout import DIRECTORIES

    out = {"": dir_ok(uid, gid)}
    out.update({rel: dir_ok(uid, gid) for rel in DIRECTORIES})
    return out
