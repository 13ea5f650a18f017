"""A short-lived SGLang server: start, readiness, request, log checks, teardown.

Readiness is `GET /ready` (200 once the built-in warmup has passed), polled
with backoff: a closed port while the model loads is normal. The log is
scanned as it streams for the lines SGLang really prints: the KV-cache
allocation (`KV Cache is allocated. dtype: torch.float8_e4m3fn, ...`), the
out-of-memory text (`Not enough memory. Please try to increase
--mem-fraction-static.`), the MoE config in use, NVRTC failures.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from .exec_runtime import Process, Runtime

OOM_TEXT = "Not enough memory. Please try to increase --mem-fraction-static"
KV_LINE = re.compile(r"KV Cache is allocated\. dtype: (torch\.[a-z0-9_]+)")
MEM_FRACTION = re.compile(r"mem_fraction_static=([0-9.]+)")
MOE_LINE = re.compile(r"MoE kernel config from (.+?)\.?$")
MOE_DEFAULT = "Using default MoE kernel config"
NVRTC = re.compile(r"nvrtc.*(error|fail)", re.I)
FLASHINFER_BUILD = re.compile(r"Building JIT module (\S+?);")
PROMPT_TOKENS = "sglang:prompt_tokens_total"


@dataclass
class LogScan:
    """What the server's output said, collected while it streams."""

    kv_dtypes: list = field(default_factory=list)
    oom: str = ""
    mem_fraction_seen: list = field(default_factory=list)
    moe_configs: list = field(default_factory=list)
    moe_default: bool = False
    nvrtc: str = ""
    flashinfer_builds: list = field(default_factory=list)
    tail: list = field(default_factory=list)  # last lines, for error reports

    def feed(self, line: str) -> None:
        self.tail.append(line)
        if len(self.tail) > 40:
            del self.tail[:-40]
        m = KV_LINE.search(line)
        if m:
            self.kv_dtypes.append(m.group(1))
        if OOM_TEXT in line:
            self.oom = line.strip()
            fm = MEM_FRACTION.search(line)
            if fm:
                self.mem_fraction_seen.append(float(fm.group(1)))
        m = MOE_LINE.search(line)
        if m:
            self.moe_configs.append(m.group(1).strip())
        if MOE_DEFAULT in line:
            self.moe_default = True
        if not self.nvrtc and NVRTC.search(line):
            self.nvrtc = line.strip()
        m = FLASHINFER_BUILD.search(line)
        if m:
            self.flashinfer_builds.append(m.group(1))


class ServerError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


class WarmupServer:
    """One server process in a runtime, reached at http://host:port."""

    def __init__(self, runtime: Runtime, host: str, port: int, log_sink):
        self.runtime, self.port, self.log_sink = runtime, port, log_sink
        self.base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        self.scan = LogScan()
        self.proc: Process | None = None
        self._lock = threading.Lock()
        self._http = None

    def _on_line(self, line: str) -> None:
        with self._lock:
            self.scan.feed(line)
        self.log_sink(line)

    def start(self, argv: list, env: dict) -> None:
        try:
            self.proc = self.runtime.spawn(argv, env, self._on_line)
        except OSError as exc:
            raise ServerError("server_exited", f"cannot start {argv[0]}: {exc.strerror or exc}") from None

    def client(self, timeout: float = 10.0):
        """One HTTP client per server, reused (building one loads the CA store,
        ~30 ms, which a plain-HTTP loopback server never needs); each use sets
        its own timeout. Closed at teardown."""
        import httpx

        if self._http is None:
            self._http = httpx.Client(base_url=self.base, timeout=10.0, trust_env=False, verify=False)
        self._http.timeout = httpx.Timeout(timeout)
        return _Borrowed(self._http)

    def exited_error(self, rc: int) -> ServerError:
        if self.scan.oom:
            return ServerError("oom_during_warmup", self.scan.oom)
        if self.scan.nvrtc:
            return ServerError("nvrtc_compile_failed", self.scan.nvrtc)
        last = next((ln for ln in reversed(self.scan.tail) if ln.strip()), "")
        return ServerError("server_exited", f"server exited with code {rc} before it was ready: {last[-300:]}")

    def wait_ready(self, timeout_s: float, progress) -> float:
        """Poll GET /ready with backoff until 200; raise ServerError."""
        import httpx

        start = time.monotonic()
        delay = 0.05  # a refused connect on loopback costs microseconds: poll often early, back off to 2 s
        with self.client(timeout=5.0) as http:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    self.proc.wait(1)
                    raise self.exited_error(rc)
                try:
                    if http.get("/ready").status_code == 200:
                        return time.monotonic() - start
                except httpx.TransportError:
                    pass  # the port opens only after the model has loaded
                elapsed = time.monotonic() - start
                if elapsed >= timeout_s:
                    raise ServerError("readiness_timeout",
                                      f"GET {self.base}/ready not 200 after {timeout_s:g}s (timeouts.readiness_s)")
                progress("readiness", elapsed)
                time.sleep(min(delay, max(0.0, timeout_s - elapsed)))
                delay = min(delay * 1.3, 2.0)

    def server_info(self) -> dict:
        with self.client() as http:
            resp = http.get("/server_info")
            if resp.status_code != 200:
                return {}
            data = resp.json()
            return data if isinstance(data, dict) else {}

    def prompt_tokens(self) -> float | None:
        """Sum of sglang:prompt_tokens_total on /metrics (None: not exposed)."""
        with self.client() as http:
            resp = http.get("/metrics")
        if resp.status_code != 200:
            return None
        return sum_metric(resp.text, PROMPT_TOKENS)

    def generate(self, timeout_s: float) -> dict:
        body = {"input_ids": [0, 1, 2, 3], "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        import httpx

        try:
            with self.client(timeout=timeout_s) as http:
                resp = http.post("/generate", json=body)
        except httpx.HTTPError as exc:
            raise ServerError("generate_failed", f"POST /generate: {exc}") from None
        if resp.status_code != 200:
            raise ServerError("generate_failed", f"POST /generate returned {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        return data[0] if isinstance(data, list) and data else data

    def teardown(self, grace_s: float) -> tuple[bool, str]:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.proc is None:
            return True, "not started"
        return self.runtime.teardown(self.proc, grace_s)


class _Borrowed:
    """`with server.client() as http:` without closing the shared client."""

    def __init__(self, http):
        self.http = http

    def __enter__(self):
        return self.http

    def __exit__(self, *exc):
        return False


def sum_metric(text: str, name: str) -> float | None:
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in "{ "):
            try:
                total += float(line.rsplit(None, 1)[1])
                seen = True
            except (ValueError, IndexError):
                continue
    return total if seen else None


def settings_mismatch(scan: LogScan, info: dict, settings: dict, expected_kv: tuple) -> str:
    """'' when the server runs with the KV dtype and memory fraction asked for."""
    problems = []
    if expected_kv and scan.kv_dtypes and any(d not in expected_kv for d in scan.kv_dtypes):
        problems.append(f"KV cache dtype {scan.kv_dtypes[-1]} in the log, asked {settings.get('kv_cache_dtype')} "
                        f"({' or '.join(expected_kv)})")
    want_mem = settings.get("mem_fraction_static")
    got_mem = info.get("mem_fraction_static")
    if want_mem is not None and isinstance(got_mem, (int, float)) and abs(got_mem - want_mem) > 1e-6:
        problems.append(f"mem_fraction_static {got_mem} on the server, asked {want_mem}")
    got_kv = info.get("kv_cache_dtype")
    if settings.get("kv_cache_dtype") not in (None, "auto") and isinstance(got_kv, str) and \
            got_kv != settings["kv_cache_dtype"]:
        problems.append(f"kv_cache_dtype {got_kv} on the server, asked {settings['kv_cache_dtype']}")
    for seen in scan.mem_fraction_seen:
        if want_mem is not None and abs(seen - want_mem) > 1e-6:
            problems.append(f"mem_fraction_static={seen} in the log, asked {want_mem}")
    return "; ".join(problems)


_PROM_CLIENTS: dict = {}


def prometheus_samples(url: str, query: str, timeout: float = 5.0) -> tuple[int, float | None, str]:
    """(sample count, summed value, error) of an instant query. One client
    per Prometheus URL for the whole run (the probe polls)."""
    import httpx

    http = _PROM_CLIENTS.get(url)
    if http is None:
        http = _PROM_CLIENTS[url] = httpx.Client(timeout=timeout, trust_env=False)
    try:
        resp = http.get(url.rstrip("/") + "/api/v1/query", params={"query": query})
        data = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        return 0, None, f"{url}: {exc}"
    if data.get("status") != "success":
        return 0, None, data.get("error", "query failed")
    result = data.get("data", {}).get("result", [])
    values = []
    for item in result:
        try:
            values.append(float(item["value"][1]))
        except (KeyError, ValueError, IndexError, TypeError):
            continue
    return len(values), (sum(values) if values else None), ""
