"""Tests of the fake SGLang test double in tests/fake_sglang.

Every check runs the double as a real subprocess (``python -m
sglang.launch_server`` / ``sglang.compile_deep_gemm``) with
``tests/fake_sglang`` on PYTHONPATH, on a free loopback port, in its own
process group, with every cache directory under ``tmp_path``.  The fake is
never imported into the pytest process: ``import sglang`` sets cache
variables in ``os.environ`` (as the real package does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

FAKE_ROOT = Path(__file__).resolve().parent / "fake_sglang"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FI_DIR_PARTS = (".cache", "flashinfer", "0.7.2.post1", "90a")
DENSE_FP8_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 2816,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
}
MOE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "intermediate_size": 1024,
    "moe_intermediate_size": 256,
    "num_experts": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}
MOE_FILE = "E=8,N=256,device_name=NVIDIA_H100_80GB_HBM3.json"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(method: str, url: str, body: Optional[object] = None, raw: Optional[bytes] = None, timeout: float = 5.0) -> Tuple[int, bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False


def children_of(pid: int) -> List[Tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out.append((int(entry), f.read().replace(b"\0", b" ").decode()))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return out


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def parse_metrics(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        assert m, f"bad exposition line: {line!r}"
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or "")))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric(samples, name: str, **labels: str) -> float:
    total = 0.0
    found = False
    for (n, labs), v in samples.items():
        d = dict(labs)
        if n == name and all(d.get(k) == val for k, val in labels.items()):
            total += v
            found = True
    assert found, f"{name}{labels} not exported"
    return total


class Fake:
    """One fake process (server or compile_deep_gemm) in its own process group."""

    def __init__(self, tmp: Path, env: Dict[str, str], args: List[str], module: str, tag: str, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.out_path = tmp / f"{tag}.out"
        self.err_path = tmp / f"{tag}.err"
        self.args = args + ["--port", str(self.port)]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *self.args],
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Tuple[int, bytes]:
        return http("GET", self.url(path))

    def post(self, path: str, body=None, raw=None) -> Tuple[int, bytes]:
        return http("POST", self.url(path), body=body, raw=raw)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_ready(self, timeout: float = 10.0) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.stderr}"
            try:
                return self.get("/ready")[0] == 200
            except OSError:
                return False

        assert wait_for(ready, timeout), self.stderr

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def terminate(self, timeout: float = 5.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def fake(tmp_path):
    """Factory: fake(*args, env=None, module=..., model=...) -> Fake; all killed at teardown."""
    started: List[Fake] = []
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SGLANG_", "FAKE_", "TRITON_", "TORCHINDUCTOR_", "FLASHINFER_", "CUDA_CACHE", "DG_", "TILELANG_"))
    }
    base_env.update(
        PYTHONPATH=str(FAKE_ROOT),
        HOME=str(tmp_path / "home"),
        SGLANG_CACHE_DIR=str(tmp_path / "cache"),
        FAKE_SGLANG_LOAD_S="0.05",
        FAKE_SGLANG_WARMUP_S="0.05",
        FAKE_SGLANG_LAUNCH_LOG=str(tmp_path / "launch.jsonl"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    default_model = tmp_path / "model"
    default_model.mkdir()

    def start(*args: str, env: Optional[Dict[str, Optional[str]]] = None, module: str = "sglang.launch_server", model: Optional[Path] = None, port: Optional[int] = None) -> Fake:
        e = dict(base_env)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        argv = ["--model-path", str(model or default_model), *args]
        f = Fake(tmp_path, e, argv, module, tag=f"p{len(started)}", port=port)
        started.append(f)
        return f

    yield start
    for f in started:
        f.kill_group()


def run_python(code: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_", "FAKE_"))}
    e["PYTHONPATH"] = str(FAKE_ROOT)
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=30)


def write_model(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


# ---------------------------------------------------------------------------
# package surface and parser
# ---------------------------------------------------------------------------
def test_version_and_override():
    assert run_python("import sglang; print(sglang.__version__)").stdout.strip() == "0.5.23"
    out = run_python("import sglang; print(sglang.__version__)", {"FAKE_SGLANG_VERSION": "9.9.9"})
    assert out.stdout.strip() == "9.9.9"


def test_import_redirects_caches_with_setdefault(tmp_path):
    code = "import os, sglang, json; print(json.dumps({k: os.environ.get(k) for k in ('TRITON_CACHE_DIR','TORCHINDUCTOR_CACHE_DIR','CUDA_CACHE_PATH','FLASHINFER_WORKSPACE_BASE')}))"
    out = json.loads(run_python(code, {"SGLANG_CACHE_DIR": str(tmp_path / "c"), "TRITON_CACHE_DIR": "/mine"}).stdout)
    assert out == {
        "TRITON_CACHE_DIR": "/mine",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "c" / "inductor"),
        "CUDA_CACHE_PATH": str(tmp_path / "c" / "nv"),
        "FLASHINFER_WORKSPACE_BASE": str(tmp_path / "c"),
    }


PREPARE = "from sglang.srt.server_args import ServerArgs, prepare_server_args; prepare_server_args({argv!r})"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--enable-metrics", "false"], "sglang serve: error: unrecognized arguments: false"),
        (["--enable-trace", "false"], "sglang serve: error: unrecognized arguments: false"),
        (
            ["--cuda-graph-max-bs", "8"],
            "sglang serve: error: ambiguous option: --cuda-graph-max-bs could match "
            "--cuda-graph-max-bs-decode, --cuda-graph-max-bs-prefill",
        ),
        (["--cuda-graph-bs", "8"], "ambiguous option: --cuda-graph-bs could match"),
        (["--kv-cache-dtype", "fp8"], "argument --kv-cache-dtype: invalid choice: 'fp8'"),
        (["--context-length", "lots"], "argument --context-length: invalid human_readable_int value: 'lots'"),
        (["--mem-fraction-static", "high"], "argument --mem-fraction-static: invalid float value: 'high'"),
        (["--cuda-graph-backend-decode", "tc_piecewise"], "tc_piecewise was removed"),
    ],
)
def test_prepare_server_args_rejects_like_argparse(argv, message):
    res = run_python(PREPARE.format(argv=argv))
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert res.stderr.startswith("usage: sglang serve")


def test_prepare_server_args_values_and_aliases():
    code = (
        "import json; from sglang.srt.server_args import prepare_server_args as p\n"
        "a = p(['--model', 'm', '--context-length', '8k', '--max-total-tokens', '8Ki', '--max-prefill-tokens', '16384',"
        " '--tensor-parallel-size', '2', '--ep', '2', '--enable-hicache', '--cuda-graph-bs-decode', '1', '2', '4',"
        " '--tp', '4', '--disable-cuda-graph', '--fp8-gemm-backend', 'deep_gemm'])\n"
        "print(json.dumps(a.to_dict()))"
    )
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["model_path"] == "m"
    assert d["context_length"] == 8000 and d["max_total_tokens"] == 8192
    assert d["tp_size"] == 4 and d["ep_size"] == 2  # --tp is a unique prefix of --tp-size
    assert d["enable_hierarchical_cache"] is True
    assert d["cuda_graph_bs_decode"] == [1, 2, 4]
    assert d["disable_cuda_graph"] is True and d["fp8_gemm_runner_backend"] == "deep_gemm"
    assert d["enable_metrics"] is False and d["port"] == 30000 and d["host"] == "127.0.0.1"
    assert "deprecated" in res.stderr and "--disable-cuda-graph" in res.stderr


def test_get_config_file_name_format():
    code = (
        "from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import get_config_file_name as g\n"
        "print(g(8, 256, None, None)); print(g(257, 128, 'fp8_w8a8', [128, 128])); print(g(8, 256, 'fp8_w8a8', [0, 0], down_moe=True))"
    )
    res = run_python(code)
    assert res.stdout.splitlines() == [
        "E=8,N=256,device_name=NVIDIA_H100_80GB_HBM3.json",
        "E=257,N=128,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128, 128].json",
        "E=8,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8_down.json",
    ]


def test_launch_with_bad_flag_exits_2_and_is_logged(fake, tmp_path):
    f = fake("--enable-metrics", "false")
    assert f.wait() == 2
    assert "sglang serve: error: unrecognized arguments: false" in f.stderr
    assert not port_open(f.port)
    lines = [json.loads(x) for x in (tmp_path / "launch.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert lines[0]["module"] == "sglang.launch_server"
    assert lines[0]["argv"] == f.args and lines[0]["pid"] == f.pid


# ---------------------------------------------------------------------------
# server lifecycle, endpoints, metrics
# ---------------------------------------------------------------------------
def test_lifecycle_endpoints_metrics_and_sigterm(fake, tmp_path):
    f = fake(
        "--enable-metrics", "--kv-cache-dtype", "fp8_e4m3", "--served-model-name", "tiny",
        "--cuda-graph-max-bs-decode", "4",
        env={"FAKE_SGLANG_LOAD_S": "0.6", "FAKE_SGLANG_WARMUP_S": "0.4"},
    )
    # Loading: the process is alive but nothing listens on the port.
    time.sleep(0.25)
    assert f.proc.poll() is None and not port_open(f.port)
    assert wait_for(lambda: port_open(f.port), 5)
    # Port open, warmup pending: /ready and /health 503, /model_info already 200.
    assert f.get("/ready")[0] == 503
    assert f.get("/health")[0] == 503
    status, body = f.get("/model_info")
    assert status == 200
    info = json.loads(body)
    for key in ("model_path", "served_model_name", "tokenizer_path", "is_generation", "preferred_sampling_params",
                "weight_version", "load_format", "reasoning_parser", "tool_call_parser", "disaggregation_mode",
                "has_image_understanding", "has_audio_understanding", "model_type", "architectures"):
        assert key in info
    assert info["served_model_name"] == "tiny"
    f.wait_ready()

    err = f.stderr
    assert "The server is fired up and ready to roll!" in err
    assert re.search(r"KV Cache is allocated\. dtype: torch\.float8_e4m3fn, #tokens: \d+, K size: [\d.]+ GB, V size: [\d.]+ GB", err)
    assert re.search(r"Load weight end\. elapsed=[\d.]+ s, .*avail mem=[\d.]+ GB, mem usage=[\d.]+ GB\.", err)
    assert "Capture target decode CUDA graph begin. backend=full" in err
    assert re.search(r"Capture target decode CUDA graph end\. bs=\[1, 2, 4\], elapsed=[\d.]+ s, mem usage=[\d.]+ GB, avail mem=[\d.]+ GB\.", err)
    assert err.index("KV Cache is allocated") < err.index("Uvicorn running") < err.index("fired up")

    # Metrics: the built-in warmup (6 words, 8 new tokens) is already counted.
    status, body = f.get("/metrics")
    assert status == 200
    text = body.decode()
    assert "# TYPE sglang:prompt_tokens_total counter" in text
    assert "# HELP sglang:num_requests_total" in text
    m0 = parse_metrics(text)
    lab = dict(model_name="tiny", engine_type="unified", is_streaming="false")
    assert metric(m0, "sglang:num_requests_total", **lab) == 1
    assert metric(m0, "sglang:prompt_tokens_total", **lab) == 6
    assert metric(m0, "sglang:generation_tokens_total", **lab) == 8
    for gauge in ("sglang:num_running_reqs", "sglang:cache_hit_rate", "sglang:token_usage"):
        metric(m0, gauge, model_name="tiny", tp_rank="0", pp_rank="0", moe_ep_rank="0")
    assert metric(m0, "sglang:startup_time_seconds", phase="load_weight") >= 0.5
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:  # pragma: no cover - prometheus-client is a test extra
        pass
    else:
        names = {fam.name for fam in text_string_to_metric_families(text)}
        assert {"sglang:prompt_tokens", "sglang:num_requests", "sglang:token_usage"} <= names

    # Health checks are not counted.
    assert f.get("/health")[0] == 200 and f.get("/health_generate")[0] == 200

    # Generate: response shape and counters.
    status, body = f.post("/generate", {"input_ids": [1, 2, 3, 4, 5], "sampling_params": {"max_new_tokens": 7, "temperature": 0}})
    assert status == 200
    out = json.loads(body)
    assert isinstance(out["text"], str) and len(out["output_ids"]) == 7
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 7}
    assert meta["prompt_tokens"] == 5 and meta["completion_tokens"] == 7
    for key in ("id", "cached_tokens", "reasoning_tokens", "weight_version", "num_retractions", "e2e_latency"):
        assert key in meta
    status, body = f.post("/generate", {"text": "one two three", "sampling_params": {"max_new_tokens": 2}})
    assert status == 200 and json.loads(body)["meta_info"]["prompt_tokens"] == 3
    status, body = f.post("/generate", {"text": ["a b", "c"], "sampling_params": {"max_new_tokens": 1}})
    assert status == 200 and [r["meta_info"]["prompt_tokens"] for r in json.loads(body)] == [2, 1]

    m1 = parse_metrics(f.get("/metrics")[1].decode())
    assert metric(m1, "sglang:num_requests_total", **lab) == 1 + 1 + 1 + 2
    assert metric(m1, "sglang:prompt_tokens_total", **lab) == 6 + 5 + 3 + 3
    assert metric(m1, "sglang:generation_tokens_total", **lab) == 8 + 7 + 2 + 2

    # Bad bodies -> 400 {"error": ...}, not counted.
    for raw in (b"{not json", b"[]", json.dumps({"sampling_params": {}}).encode(),
                json.dumps({"input_ids": [1], "sampling_params": {"max_new_tokens": -1}}).encode()):
        status, body = f.post("/generate", raw=raw)
        assert status == 400, raw
        assert isinstance(json.loads(body)["error"], str)
    assert metric(parse_metrics(f.get("/metrics")[1].decode()), "sglang:num_requests_total", **lab) == 5

    # Streaming.
    status, body = f.post("/generate", {"input_ids": [7, 8], "sampling_params": {"max_new_tokens": 3}, "stream": True})
    events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "data: [DONE]" and len(events) == 4

    # Other endpoints.
    status, body = f.get("/get_model_info")
    assert status == 200 and json.loads(body)["model_type"] == "llama"
    assert "/get_model_info' is deprecated" in f.stderr
    models = json.loads(f.get("/v1/models")[1])
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    server_info = json.loads(f.get("/server_info")[1])
    assert server_info["version"] == "0.5.23" and server_info["kv_cache_dtype"] == "fp8_e4m3"
    assert f.get("/no_such_endpoint")[0] == 404

    # One scheduler-like child in the same process group.
    kids = children_of(f.pid)
    assert len(kids) == 1 and kids[0][1].startswith("sglang::scheduler_TP0")
    child = kids[0][0]
    assert os.getpgid(child) == os.getpgid(f.pid) == f.pid

    assert f.terminate() == 0
    assert wait_for(lambda: not proc_alive(child), 3)
    assert not port_open(f.port)

    [launch] = [json.loads(x) for x in (tmp_path / "launch.jsonl").read_text().splitlines()]
    assert launch["argv"] == f.args
    assert launch["env"]["SGLANG_CACHE_DIR"] == str(tmp_path / "cache")
    assert "TRITON_CACHE_DIR" not in launch["env"]  # the caller did not set it
    assert launch["cache_dirs"]["triton"] == str(tmp_path / "cache" / "triton")


def test_no_metrics_without_flag_and_skip_warmup(fake):
    f = fake("--skip-server-warmup")
    f.wait_ready()
    assert f.get("/metrics") == (404, b'{"detail": "Not Found"}')
    assert "The server is fired up and ready to roll!" in f.stderr
    assert '"POST /generate' not in f.stdout  # no warmup request was sent
    assert f.terminate() == 0


def test_port_in_use_exits_1(fake):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        f = fake("--skip-server-warmup", port=s.getsockname()[1])
        assert f.wait() == 1
    assert "address already in use" in f.stderr
    assert children_of(f.pid) == []


# ---------------------------------------------------------------------------
# cache writes
# ---------------------------------------------------------------------------
def _run_until_ready(fake, *args, env=None, model=None) -> Fake:
    f = fake("--skip-server-warmup", *args, env=env, model=model)
    f.wait_ready()
    assert f.terminate() == 0
    return f


def test_caches_follow_env_and_torch_compile_rules(fake, tmp_path):
    home = tmp_path / "home"
    env = {
        "SGLANG_CACHE_DIR": None,  # default: $HOME/.cache/sglang
        "TRITON_CACHE_DIR": str(tmp_path / "tri"),
        "CUDA_CACHE_PATH": str(tmp_path / "nvc"),
    }
    f = _run_until_ready(fake, "--enable-torch-compile", "--cuda-graph-bs-decode", "1", "2", "4", "64", env=env)
    default_root = home / ".cache" / "sglang"
    inductor = default_root / "inductor"
    fx = sorted(p for p in (inductor / "fxgraph").glob("*/*") if p.is_dir())
    assert len(fx) == 2 + 3  # 2 always-on helper graphs + bs 1, 2, 4 (64 > --torch-compile-max-bs 32)
    assert all(p.name.startswith("f") and p.parent.name == p.name[1:3] for p in fx)
    assert list((inductor / "aotautograd").glob("*/*/entry"))
    cubins = list((tmp_path / "tri").glob("*/*.cubin"))
    assert cubins and all(len(c.parent.name) == 52 for c in cubins)
    assert all((c.parent / f"__grp__{c.stem}.json").exists() for c in cubins)
    assert (tmp_path / "nvc" / "ComputeCache" / "index").exists()
    assert not (default_root / "triton").exists() and not (default_root / "nv").exists()
    assert not (default_root / "deep_gemm").exists()  # bf16 model: no DeepGEMM
    # Workspace + empty JIT log exist (FlashInfer import), but no module: backend is fa3 by default.
    ws = default_root.joinpath(*FI_DIR_PARTS)
    assert (ws / "flashinfer_jit.log").read_text() == ""
    assert not (ws / "cached_ops").exists()

    # Warm rerun writes nothing new.
    before = sorted(str(p) for p in tmp_path.rglob("*") if "launch" not in p.name and p.suffix not in (".out", ".err"))
    _run_until_ready(fake, "--enable-torch-compile", "--cuda-graph-bs-decode", "1", "2", "4", "64", env=env)
    after = sorted(str(p) for p in tmp_path.rglob("*") if "launch" not in p.name and p.suffix not in (".out", ".err"))
    assert before == after

    # Decode graph disabled -> torch.compile compiles nothing.
    g = _run_until_ready(
        fake, "--enable-torch-compile", "--disable-cuda-graph",
        env={"SGLANG_CACHE_DIR": str(tmp_path / "c2"), "FAKE_SGLANG_NO_HELPER_COMPILE": "1"},
    )
    assert not (tmp_path / "c2" / "inductor").exists()
    assert "Capture target decode CUDA graph" not in g.stderr
    assert "Capture target prefill CUDA graph" not in g.stderr
    assert "'--disable-cuda-graph' is deprecated" in g.stderr


def test_flashinfer_cold_then_warm_and_ninja(fake, tmp_path):
    data = tmp_path / "fi_data"
    shutil.copytree(FAKE_ROOT / "sglang" / "_fake" / "flashinfer_data", data)
    env = {"FAKE_FLASHINFER_DATA_DIR": str(data), "FLASHINFER_WORKSPACE_BASE": str(tmp_path / "fib")}
    f = _run_until_ready(fake, "--attention-backend", "flashinfer", env=env)
    built = re.findall(r" - INFO - core\.py:594 - flashinfer\.jit: Building JIT module (\S+); this can take several minutes on first use\.", f.stderr)
    decode = "batch_decode_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_dtype_idx_i32_head_dim_qk_128_head_dim_vo_128_posenc_0_use_swa_False_use_logits_cap_False"
    assert decode in built and len(built) == 2
    ops = tmp_path.joinpath("fib", *FI_DIR_PARTS, "cached_ops")
    for name in built:
        mod = ops / name
        assert (mod / f"{name}.so").exists() and (mod / "build.ninja").exists()
        assert str(mod) in (mod / "build.ninja").read_text()  # build.ninja names its own dir
        assert (ops / "tmp" / f"{name}.lock").exists()
    log = tmp_path.joinpath("fib", *FI_DIR_PARTS, "flashinfer_jit.log").read_text()
    assert log.count("Building JIT module") == 2

    g = _run_until_ready(fake, "--attention-backend", "flashinfer", env=env)
    assert "Building JIT module" not in g.stderr

    if shutil.which("ninja"):
        res = subprocess.run(["ninja", "-n", "-C", str(ops / decode)], capture_output=True, text=True)
        assert "no work to do" in res.stdout
        header = data / "include" / "flashinfer" / "attention" / "decode.cuh"
        t = time.time() + 5
        os.utime(header, (t, t))  # a package re-install
        res = subprocess.run(["ninja", "-n", "-C", str(ops / decode)], capture_output=True, text=True)
        assert "no work to do" not in res.stdout and "cuda_compile" not in res.stderr

    # fp8 KV changes the module names; only the decode backend set -> only the decode module.
    h = _run_until_ready(fake, "--decode-attention-backend", "flashinfer", "--kv-cache-dtype", "fp8_e5m2", env=env)
    assert re.findall(r"Building JIT module (\S+);", h.stderr) == [decode.replace("dtype_kv_bf16", "dtype_kv_e5m2")]


def _deep_gemm_files(root: Path) -> List[Path]:
    return sorted(root.glob("cache/kernel.*/kernel.cubin"))


def test_compile_deep_gemm_primes_and_crash_on_jit(fake, tmp_path):
    model = write_model(tmp_path / "fp8model", DENSE_FP8_CONFIG)
    dg = tmp_path / "cache" / "deep_gemm"
    cfg = tmp_path / "ignored.yaml"
    cfg.write_text("this: [is not, even, used\n")
    c = fake("--config", str(cfg), "--timeout", "30", "--enable-torch-compile", module="sglang.compile_deep_gemm", model=model)
    assert c.wait(20) == 0, c.stderr
    assert "Begin DeepGEMM Kernels compilation..." in c.stdout
    assert "DeepGEMM Kernels compilation finished successfully." in c.stdout
    assert "KV Cache is allocated. dtype: torch.bfloat16" in c.stderr
    assert "Try DeepGEMM JIT Compiling for <GEMM_NT_F8F8BF16> N=1536, K=1024, num_groups=1 with all Ms." in c.stderr
    assert "Entering DeepGEMM JIT Pre-Compile session" not in c.stderr  # suppressed in the precompile stage
    assert "Capture target decode CUDA graph" not in c.stderr  # graphs forced off
    assert len([p for p in (tmp_path / "cache" / "inductor" / "fxgraph").glob("*/*") if p.is_dir()]) == 2  # helpers only
    kernels = _deep_gemm_files(dg)
    assert len(kernels) == 4 * 2  # 4 GEMM shapes x BLOCK_M {64, 128}
    assert (dg / "locks" / "GEMM_NT_F8F8BF16_n1536_k1024_g1.lock").exists()
    launches = [json.loads(x) for x in (tmp_path / "launch.jsonl").read_text().splitlines()]
    assert [x["module"] for x in launches] == ["sglang.compile_deep_gemm"]

    # Primed: a server with SGLANG_CRASH_ON_JIT_COMPILE=1 starts; the sweep (and its warning) still runs.
    s = fake("--skip-server-warmup", env={"SGLANG_CRASH_ON_JIT_COMPILE": "1"}, model=model)
    s.wait_ready()
    assert "Entering DeepGEMM JIT Pre-Compile session" in s.stderr
    assert _deep_gemm_files(dg) == kernels
    assert s.terminate() == 0

    # Cold DeepGEMM dir + crash flag: exits non-zero before the port opens, writes nothing.
    cold = tmp_path / "cold_dg"
    x = fake(env={"SGLANG_CRASH_ON_JIT_COMPILE": "1", "SGLANG_DG_CACHE_DIR": str(cold)}, model=model)
    assert x.wait() == 1
    assert "SGLANG_CRASH_ON_JIT_COMPILE=1" in x.stderr and "Traceback" in x.stderr
    assert not port_open(x.port) and _deep_gemm_files(cold) == []


def test_compile_deep_gemm_timeout(fake, tmp_path):
    model = write_model(tmp_path / "fp8model", DENSE_FP8_CONFIG)
    c = fake("--timeout", "1", env={"FAKE_SGLANG_FAIL": "hang_before_ready"}, module="sglang.compile_deep_gemm", model=model)
    assert c.wait(10) == 1
    assert "TimeoutError: DeepGEMM Kernels compilation timeout." in c.stderr


@pytest.mark.parametrize(
    "layout, expect",
    [
        ("exact", "Using MoE kernel config from {dir}/configs/triton_3_6_0/" + MOE_FILE + "."),
        ("fallback", "Config file not found at {dir}/configs/triton_3_6_0/" + MOE_FILE + ". Fallback to triton version 3.5.1 and use MoE kernel config from {dir}/configs/triton_3_5_1/" + MOE_FILE + ". Performance might be sub-optimal!"),
        ("empty", "Using default MoE kernel config. Performance might be sub-optimal! Config file not found at {dir}/configs/triton_3_6_0/" + MOE_FILE),
        ("missing", "FileNotFoundError"),
        ("not_triton", None),
    ],
)
def test_moe_config_lookup(fake, tmp_path, layout, expect):
    model = write_model(tmp_path / "moe", MOE_CONFIG)
    moe_dir = tmp_path / "moe_cfg"
    moe_dir.mkdir()
    if layout in ("exact", "fallback", "empty", "not_triton"):
        (moe_dir / "configs").mkdir()
    if layout in ("exact", "not_triton"):
        (moe_dir / "configs" / "triton_3_6_0").mkdir()
        (moe_dir / "configs" / "triton_3_6_0" / MOE_FILE).write_text('{"1": {"BLOCK_SIZE_M": 16}}')
    if layout == "fallback":
        (moe_dir / "configs" / "triton_3_5_1").mkdir()
        (moe_dir / "configs" / "triton_3_5_1" / MOE_FILE).write_text('{"1": {"BLOCK_SIZE_M": 16}}')
    args = ["--skip-server-warmup"] + (["--moe-runner-backend", "flashinfer_cutlass"] if layout == "not_triton" else [])
    f = fake(*args, env={"SGLANG_MOE_CONFIG_DIR": str(moe_dir)}, model=model)
    if layout == "missing":
        assert f.wait() == 1
        assert "FileNotFoundError" in f.stderr and str(moe_dir / "configs") in f.stderr
        assert not port_open(f.port)
        return
    f.wait_ready()
    assert f.terminate() == 0
    if expect is None:
        assert "MoE kernel config" not in f.stderr
    else:
        assert expect.format(dir=moe_dir) in f.stderr


# ---------------------------------------------------------------------------
# failure injection and process teardown
# ---------------------------------------------------------------------------
def test_exit_early_and_oom(fake):
    a = fake(env={"FAKE_SGLANG_FAIL": "exit_early"})
    b = fake("--mem-fraction-static", "0.94", env={"FAKE_SGLANG_FAIL": "oom"})
    assert a.wait() == 1 and b.wait() == 1
    assert "Traceback (most recent call last)" in a.stderr and "exit_early" in a.stderr
    assert not port_open(a.port)
    assert "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. Current value: mem_fraction_static=0.94" in b.stderr
    assert "KV Cache is allocated" not in b.stderr


def test_hang_before_ready_then_sigterm(fake):
    f = fake(env={"FAKE_SGLANG_FAIL": "hang_before_ready"})
    assert wait_for(lambda: "Capture target decode CUDA graph end" in f.stderr, 5)
    time.sleep(0.5)
    assert f.proc.poll() is None and not port_open(f.port)
    assert f.terminate() == 0


def test_wrong_kv_dtype_and_generate_500(fake):
    f = fake("--kv-cache-dtype", "fp8_e4m3", env={"FAKE_SGLANG_FAIL": "wrong_kv_dtype,generate_500"})
    f.wait_ready()
    assert "KV Cache is allocated. dtype: torch.bfloat16," in f.stderr
    status, body = f.post("/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}})
    assert status == 500 and "error" in json.loads(body)
    assert f.terminate() == 0


def test_warmup_failure_kills_tree(fake):
    f = fake(env={"FAKE_SGLANG_FAIL": "warmup_fail"})
    assert f.wait() == -signal.SIGKILL
    assert "Initialization failed. warmup error:" in f.stderr
    assert "fired up" not in f.stderr


def test_ignore_sigterm_needs_group_sigkill(fake):
    f = fake(env={"FAKE_SGLANG_FAIL": "ignore_sigterm"})
    f.wait_ready()
    [(child, _cmd)] = children_of(f.pid)
    os.killpg(f.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert f.proc.poll() is None and proc_alive(child) and f.get("/ready")[0] == 200
    os.killpg(f.pid, signal.SIGKILL)
    assert f.wait() == -signal.SIGKILL
    assert wait_for(lambda: not proc_alive(child), 3)


def test_child_dies_with_parent_by_default(fake):
    f = fake("--skip-server-warmup")
    f.wait_ready()
    [(child, _cmd)] = children_of(f.pid)
    f.proc.kill()  # parent only
    f.wait()
    assert wait_for(lambda: not proc_alive(child), 3)


def test_orphan_child_needs_process_group_kill(fake):
    f = fake("--skip-server-warmup", env={"FAKE_SGLANG_ORPHAN_CHILD": "1"})
    f.wait_ready()
    [(child, cmd)] = children_of(f.pid)
    assert cmd.startswith("sglang::scheduler_TP0")
    f.proc.kill()  # parent only: the orphaned child keeps running
    f.wait()
    time.sleep(0.4)
    assert proc_alive(child)
    os.killpg(f.pid, signal.SIGKILL)  # the process group still exists through the child
    assert wait_for(lambda: not proc_alive(child), 3)
