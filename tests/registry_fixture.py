"""A real OCI registry for tests: Debian's docker-registry on loopback,
one per test module, storage in a temp dir."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REGISTRY = shutil.which("docker-registry")
needs_registry = pytest.mark.skipif(REGISTRY is None, reason="Debian's docker-registry is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry():
    work = Path(tempfile.mkdtemp(prefix="sglprep-registry-"))
    port = free_port()
    (work / "config.yml").write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
                                     f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([REGISTRY, "serve", str(work / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}", work / "data"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(work, ignore_errors=True)




@pytest.fixture
def token_registry(registry):
    """The loopback registry behind token auth, as Docker Hub, GHCR or Harbor
    do it: a request without a valid bearer token gets a 401 with a Bearer
    challenge; `/token` hands out a token for the right basic credentials.
    Yields (address, credentials, counters)."""
    import base64
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    upstream = registry[0]
    creds = ("fleet", "hunter2-token-auth")
    good_basic = "Basic " + base64.b64encode(":".join(creds).encode()).decode()
    token = "tok-" + os.urandom(8).hex()
    counters = {"challenges": 0, "tokens": 0, "refused_tokens": 0, "forwarded": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            host = f"127.0.0.1:{self.server.server_address[1]}"
            if self.path.startswith("/token"):
                if self.headers.get("Authorization") != good_basic:
                    counters["refused_tokens"] += 1
                    return self._reply(401, {}, b"{}")
                counters["tokens"] += 1
                return self._reply(200, {"Content-Type": "application/json"},
                                   json.dumps({"token": token}).encode())
            if self.headers.get("Authorization") != f"Bearer {token}":
                counters["challenges"] += 1
                return self._reply(401, {"WWW-Authenticate": f'Bearer realm="http://{host}/token",'
                                                             f'service="test-registry",scope="repository:x:pull,push"'},
                                   b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            counters["forwarded"] += 1
            conn = http.client.HTTPConnection(upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v.replace(upstream, host) for k, v in resp.getheaders()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            self._reply(resp.status, out, data)

        def _reply(self, status, headers, data):
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", creds, counters
    server.shutdown()
    server.server_close()
