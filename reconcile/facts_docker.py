"""Facts from the Docker engine: read-only GETs on its API.

Plan needs two answers (the container by name, the image by reference); the
docker SDK takes longer to import than a whole converged plan, so facts talk
to the engine's unix socket with the stdlib. Apply uses the SDK.
"""
from __future__ import annotations

import os
from typing import NamedTuple

API_TIMEOUT_S = 10


class EngineFact(NamedTuple):
    reachable: bool
    endpoint: str
    error: str = ""
    version: str = ""


class ContainerFact(NamedTuple):
    name: str
    kind: str  # missing | present
    id: str = ""
    status: str = ""  # running | exited | created | paused | restarting | dead
    image_id: str = ""
    labels: dict = {}
    started_at: str = ""  # State.StartedAt (RFC 3339, nanoseconds)


class ImageFact(NamedTuple):
    ref: str
    kind: str  # missing | present
    id: str = ""


def docker_socket(environ) -> str | None:
    """The engine's unix socket path, or None when DOCKER_HOST is not unix://."""
    host = environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return None


class EngineAPI:
    """GET-only client of the engine API over its unix socket."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def get(self, path: str) -> tuple[int, object]:
        import http.client
        import json
        import socket

        class UnixConnection(http.client.HTTPConnection):
            def connect(conn):  # noqa: N805 - http.client's hook
                conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.sock.settimeout(API_TIMEOUT_S)
                conn.sock.connect(self.socket_path)

        conn = UnixConnection("localhost", timeout=API_TIMEOUT_S)
        try:
            conn.request("GET", path, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            return resp.status, body.decode(errors="replace")


def engine_fact(environ) -> EngineFact:
    sock = docker_socket(environ)
    endpoint = environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if sock is None:
        return EngineFact(False, endpoint, "only unix:// DOCKER_HOST endpoints are supported")
    if not os.path.exists(sock):
        return EngineFact(False, endpoint, f"{sock} does not exist")
    try:
        status, data = EngineAPI(sock).get("/version")
    except OSError as exc:
        return EngineFact(False, endpoint, exc.strerror or str(exc))
    if status != 200 or not isinstance(data, dict):
        return EngineFact(False, endpoint, f"GET /version: HTTP {status}")
    return EngineFact(True, endpoint, version=str(data.get("Version", "")))


def container_fact(environ, name: str) -> ContainerFact:
    from urllib.parse import quote

    status, data = EngineAPI(docker_socket(environ)).get(f"/containers/{quote(name, safe='')}/json")
    if status == 404 or not isinstance(data, dict):
        return ContainerFact(name=name, kind="missing")
    state = data.get("State") or {}
    return ContainerFact(name=name, kind="present", id=data.get("Id", ""), status=state.get("Status", ""),
                         image_id=data.get("Image", ""), labels=(data.get("Config") or {}).get("Labels") or {},
                         started_at=state.get("StartedAt", ""))


def image_fact(environ, ref: str) -> ImageFact:
    from urllib.parse import quote

    status, data = EngineAPI(docker_socket(environ)).get(f"/images/{quote(ref, safe='')}/json")
    if status != 200 or not isinstance(data, dict):
        return ImageFact(ref=ref, kind="missing")
    return ImageFact(ref=ref, kind="present", id=data.get("Id", ""))


def client(environ=None):
    """The docker SDK's client (imported only when an engine call needs it)."""
    import docker

    return docker.from_env(environment=dict(os.environ if environ is None else environ), timeout=120)


def docker_prober(container: str, uid: int, gid: int, env: dict, environ=None):
    """Runs read-only probes inside the container as uid:gid (returns rc,
    stdout, stderr): the runtime probe and the flag parser."""
    def run(argv: list) -> tuple:
        import docker

        try:
            cont = client(environ).containers.get(container)
            rc, output = cont.exec_run(argv, user=f"{uid}:{gid}", environment=env, demux=True)
        except docker.errors.DockerException as exc:
            return 125, "", f"docker exec in {container}: {exc}"
        out, err = output if isinstance(output, tuple) else (output, b"")
        return rc, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")
    return run
