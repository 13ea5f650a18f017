"""The container runtime, through the docker SDK.

`ContainerExecutor` creates, starts, replaces and removes `container:<name>`:
before every create, start or replace it deletes a stale pointer (the host
never writes one), and afterwards it waits for the container to publish a
fresh pointer whose manifest names that container. `DockerRuntime` runs stage
processes inside the container with `docker exec`, as the storage owner, with
an explicit environment; an exec'd process leads its own process group, so
teardown signals that group from the host and confirms it is gone.
"""
from __future__ import annotations

import json
import os
import threading
import time

from .exec_runtime import _group_alive, _signal_group
from .facts_docker import client, container_fact, engine_fact, image_fact
from .facts_host import HostFacts, parse_iso
from .plan_model import CHANGED, FAILED, UNCHANGED, Result
from .redaction import fingerprinted
from .state_container import LABEL_CONFIG, LABEL_HASH, LABEL_MANAGED
from .state_layout import POINTER


class ContainerExecutor:
    def __init__(self, desired, ctx, want: dict, want_hash: str, environ: dict | None = None, say=None):
        self.desired, self.ctx, self.want, self.want_hash = desired, ctx, want, want_hash
        self.environ = os.environ if environ is None else environ
        self.say = say or (lambda line: None)

    def execute(self, change) -> Result:
        import docker

        engine = engine_fact(self.environ)
        if not engine.reachable:
            return Result(change.address, change.action, FAILED,
                          f"Docker engine unreachable at {engine.endpoint} ({engine.error})", "engine_unreachable")
        if change.action == "blocked":
            return Result(change.address, change.action, FAILED, f"blocked: {change.message}", change.reason)
        try:
            cli = client(self.environ)
            message = getattr(self, f"_{change.action}")(cli)
        except ContainerError as exc:
            return Result(change.address, change.action, FAILED, str(exc), exc.error_type)
        except docker.errors.DockerException as exc:
            return Result(change.address, change.action, FAILED, f"docker: {exc}", "docker_error")
        if message is None:
            return Result(change.address, change.action, UNCHANGED, "already converged")
        return Result(change.address, change.action, CHANGED, message)

    # ------------------------------------------------------------- actions
    def _current(self):
        return container_fact(self.environ, self.want["name"])

    def _create(self, cli) -> str | None:
        cont = self._current()
        if cont.kind == "present":
            if cont.labels.get(LABEL_HASH) == self.want_hash and cont.status == "running":
                return None
            return self._replace(cli)
        self._ensure_image(cli)
        self._delete_stale_pointer()
        container = cli.containers.create(**self._create_args())
        container.start()
        run = self._wait_for_pointer(container.id)
        return f"created and started {container.id[:12]}, run {run}"

    def _update(self, cli) -> str | None:
        cont = self._current()
        if cont.kind == "missing":
            return self._create(cli)
        if cont.status == "running":
            return None
        self._delete_stale_pointer()
        cli.containers.get(cont.id).start()
        run = self._wait_for_pointer(cont.id)
        return f"started {cont.id[:12]}, run {run}"

    def _replace(self, cli) -> str:
        cont = self._current()
        self._ensure_image(cli)
        self._delete_stale_pointer()
        if cont.kind == "present":
            old = cli.containers.get(cont.id)
            old.stop(timeout=int(self.desired.data["timeouts"]["teardown_s"]))
            old.remove(force=True)
        container = cli.containers.create(**self._create_args())
        container.start()
        run = self._wait_for_pointer(container.id)
        return f"replaced {cont.id[:12] or '-'} with {container.id[:12]}, run {run}"

    def _delete(self, cli) -> str | None:
        cont = self._current()
        if cont.kind == "missing":
            return None
        self._delete_stale_pointer()
        old = cli.containers.get(cont.id)
        old.stop(timeout=int(self.desired.data["timeouts"]["teardown_s"]))
        old.remove(force=True)
        return f"stopped and removed {cont.id[:12]}"

    # ------------------------------------------------------------- helpers
    def _ensure_image(self, cli) -> None:
        import docker

        if image_fact(self.environ, self.want["image"]).kind == "present":
            return
        repo, _, tag = self.want["image"].rpartition(":") if ":" in self.want["image"].rsplit("/", 1)[-1] \
            else (self.want["image"], "", "latest")
        self.say(f"container: pulling {self.want['image']}")
        try:
            cli.images.pull(repo, tag=tag or "latest")
        except docker.errors.DockerException as exc:
            raise ContainerError("image_pull_failed", f"cannot pull {self.want['image']}: {exc}") from None

    def _create_args(self) -> dict:
        import docker

        w = self.want
        mounts = [docker.types.Mount(target=m["target"], source=m["source"], type="bind", read_only=m["read_only"])
                  for m in w["mounts"]]
        requests = []
        if w["gpus"] == "all":
            requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        elif isinstance(w["gpus"], list):
            requests = [docker.types.DeviceRequest(device_ids=[str(g) for g in w["gpus"]], capabilities=[["gpu"]])]
        args = dict(image=w["image"], name=w["name"], user=w["user"], environment=w["env"], mounts=mounts,
                    network_mode=w["network"], cap_add=w["cap_add"] or None, device_requests=requests or None,
                    labels={LABEL_MANAGED: "sglprep", LABEL_HASH: self.want_hash,
                            LABEL_CONFIG: json.dumps(fingerprinted(w), sort_keys=True, separators=(",", ":"))},
                    detach=True)
        if w["command"]:
            args["entrypoint"] = w["command"][:1]
            args["command"] = w["command"][1:]
        return args

    def _delete_stale_pointer(self) -> None:
        """Before any create, start or replace the pointer can only name an
        earlier run: the container publishes a new one. Deleted as the owner."""
        from .exec_privs import as_owner

        path = self.ctx.path(POINTER)
        if os.path.lexists(path):
            with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def _wait_for_pointer(self, container_id: str) -> str:
        """Wait until the container publishes a pointer whose manifest names it."""
        timeout = self.desired.data["timeouts"]["pointer_s"]
        heartbeat = self.desired.data["heartbeat_s"]
        path = self.ctx.path(POINTER)
        started = parse_iso(container_fact(self.environ, self.want["name"]).started_at[:19] + "Z") or 0
        deadline = time.monotonic() + timeout
        next_beat = time.monotonic() + heartbeat
        last = "no pointer yet"
        while time.monotonic() < deadline:
            fact = HostFacts(self.environ).pointer(path, "/telemetry", self.ctx.path("telemetry"))
            if fact.kind == "ok" and fact.manifest_exists:
                owner = str(fact.manifest.get("container_id", ""))
                published = parse_iso(str(fact.manifest.get("started_at", ""))) or 0
                if owner == container_id and published >= started - 1:
                    return str(fact.manifest.get("container_run_id", "?"))
                last = f"pointer names container {owner[:12] or '?'}, not {container_id[:12]}"
            elif fact.kind == "ok":
                last = "pointer published but its manifest is missing"
            cont = container_fact(self.environ, self.want["name"])
            if cont.status not in ("running", "created", "restarting"):
                raise ContainerError("container_exited", f"container {container_id[:12]} is {cont.status} before "
                                     f"publishing its pointer ({last})")
            if time.monotonic() >= next_beat:
                self.say(f"container: waiting for {path} ({last})")
                next_beat = time.monotonic() + heartbeat
            time.sleep(0.2)
        raise ContainerError("pointer_timeout", f"no fresh pointer from container {container_id[:12]} after "
                             f"{timeout:g}s (timeouts.pointer_s): {last}")


class ContainerError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


# ------------------------------------------------------------------ runtime

class DockerProcess:
    """A process started with `docker exec`; `pid` is its pid on the host."""

    def __init__(self, api, exec_id: str, stream, on_line):
        self.api, self.exec_id = api, exec_id
        self._pump = threading.Thread(target=self._read, args=(stream, on_line), daemon=True)
        self._pump.start()
        self.pid = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = api.exec_inspect(exec_id)
            if info.get("Pid") or not info.get("Running"):
                self.pid = info.get("Pid") or 0
                break
            time.sleep(0.02)
        self.pgid = self.pid

    def _read(self, stream, on_line) -> None:
        def emit(raw: bytes) -> None:
            try:
                on_line(raw.decode("utf-8", errors="replace"))
            except Exception:  # noqa: BLE001 - keep draining the exec stream
                pass

        buf = b""
        for chunk in stream:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                emit(line)
        if buf:
            emit(buf)

    def poll(self) -> int | None:
        info = self.api.exec_inspect(self.exec_id)
        return None if info.get("Running") else info.get("ExitCode")

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None or (deadline is not None and time.monotonic() >= deadline):
                return rc
            time.sleep(0.1)

    def drain(self, timeout: float = 5.0) -> None:
        self._pump.join(timeout)


class DockerRuntime:
    kind = "docker"

    def __init__(self, container: str, python: str, extra_env: dict, uid: int, gid: int, environ=None):
        self.container, self.python = container, python
        self.extra_env = dict(extra_env)
        self.uid, self.gid = uid, gid
        self.environ = os.environ if environ is None else environ
        self._api = None

    @property
    def api(self):
        if self._api is None:
            self._api = client(self.environ).api
        return self._api

    def base_env(self) -> dict:
        env = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
        env.update({k: self.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in self.environ})
        env.update(self.extra_env)
        return env

    def spawn(self, argv: list, env: dict, on_line, cwd: str | None = None) -> DockerProcess:
        exec_id = self.api.exec_create(self.container, argv, environment=env, user=f"{self.uid}:{self.gid}",
                                       workdir=cwd, stdout=True, stderr=True)["Id"]
        stream = self.api.exec_start(exec_id, stream=True)
        return DockerProcess(self.api, exec_id, stream, on_line)

    def teardown(self, proc: DockerProcess, grace_s: float) -> tuple[bool, str]:
        import signal

        steps = []

        def alive() -> bool:
            return proc.poll() is None or (proc.pgid and _group_alive(proc.pgid))

        if proc.pgid and alive():
            _signal_group(proc.pgid, signal.SIGTERM)
            steps.append("SIGTERM")
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and alive():
                time.sleep(0.1)
            if alive():
                _signal_group(proc.pgid, signal.SIGKILL)
                steps.append(f"SIGKILL after {grace_s:g}s")
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and alive():
                    time.sleep(0.1)
        proc.drain()
        gone = not alive()
        return gone, (", ".join(steps) or "already exited") + ("" if gone else "; processes remain")
