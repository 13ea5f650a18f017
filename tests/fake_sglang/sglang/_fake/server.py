"""The fake server runtime used by ``sglang.launch_server`` and ``sglang.compile_deep_gemm``.

Startup order mirrors the real one (facts §4): scheduler child spawned, model
"load" with nothing listening on the port (log lines, cache writes, graph
capture), named ``--warmups`` (run while the HTTP app starts, before the
socket is bound), bind the port, built-in warmup request from a thread, then
``The server is fired up and ready to roll!``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import sglang
from sglang._fake import caches
from sglang._fake.caches import CachePaths
from sglang._fake.common import (
    GiB,
    FakeGPU,
    ModelConfig,
    env_flag,
    env_float,
    failures,
    http_log,
    sched_log,
    stamp,
)
from sglang.srt.runtime_context import set_server_args

WARMUP_TEXT = "The capital city of France is"
# Requests to ourselves must never go through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_WORDS = (
    "Paris the of and to a in is was for on that with as by at from his it an were are "
    "which this be or has had first one their its new after who they two her she been "
    "other when there all during into school time may years more most only over city"
).split()
_HIST_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0]

KV_TORCH_DTYPE = {
    "fp8_e4m3": "torch.float8_e4m3fn",
    "fp8_e5m2": "torch.float8_e5m2",
    "bf16": "torch.bfloat16",
    "bfloat16": "torch.bfloat16",
    "mxfp8": "torch.float8_e4m3fn",  # unverified
    "nvfp4": "torch.uint8",  # unverified (packed fp4)
    "fp4_mx_block16": "torch.uint8",  # unverified (packed fp4)
}
_TORCH_SHORT = {
    "torch.bfloat16": "bf16",
    "torch.float16": "f16",
    "torch.float32": "f32",
    "torch.float8_e4m3fn": "e4m3",
    "torch.float8_e5m2": "e5m2",
    "torch.uint8": "u8",
}
_TORCH_BYTES = {
    "torch.bfloat16": 2.0,
    "torch.float16": 2.0,
    "torch.float32": 4.0,
    "torch.float8_e4m3fn": 1.0,
    "torch.float8_e5m2": 1.0,
    "torch.uint8": 0.5625,
}

ENTERING_DEEPGEMM = (
    "Entering DeepGEMM JIT Pre-Compile session. It may take a long time (typically 10-20 mins) "
    "if you have not run `sglang.compile_deep_gemm`. It is recommended to run "
    "`sglang.compile_deep_gemm` with same args as `sglang.launch_server` for pre-compilation to "
    "reduce the overhead if you have not run it before. For example: "
    "`python3 -m sglang.compile_deep_gemm --model deepseek-ai/DeepSeek-V3 --tp 8 --trust-remote-code`"
)


class FatalStartup(Exception):
    """A startup failure: the scheduler traceback is printed and the process exits."""

    def __init__(self, exc: BaseException, code: int = 1) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.code = code


class Terminate(BaseException):
    """Raised from the SIGTERM/SIGINT handler in the main thread."""


def _raise_terminate(signum, frame):  # pragma: no cover - exercised via subprocess tests
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminate()


def install_signal_handlers(fails: set) -> None:
    if "ignore_sigterm" in fails:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, _raise_terminate)
        signal.signal(signal.SIGINT, _raise_terminate)


def _cuda_graph_config(raw: Optional[str]) -> Dict[str, Any]:
    if not raw:
        return {}
    cfg = json.loads(raw)
    if not isinstance(cfg, dict):
        raise ValueError(f"--cuda-graph-config must be a JSON object, got {raw!r}")
    for phase in ("decode", "prefill"):
        backend = (cfg.get(phase) or {}).get("backend")
        if backend == "tc_piecewise":
            raise ValueError("tc_piecewise was removed; use one of full, breakable, disabled")
    return cfg


def default_decode_batch_sizes(max_bs: int) -> List[int]:
    sizes = [1, 2, 4, 8, 12] + list(range(16, 257, 8)) + list(range(272, 513, 16)) + list(range(544, 4097, 32))
    out = [b for b in sizes if b <= max_bs]
    if max_bs not in out and max_bs > 0:
        out.append(max_bs)
    return out


class Metrics:
    """Prometheus text exposition as prometheus_client's multiprocess mode renders it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: Dict[Tuple[str, str], float] = {}
        self.cached: Dict[str, float] = {"device": 0.0}
        self.e2e: Dict[str, List[float]] = {"false": [], "true": []}
        self.ttft: Dict[str, List[float]] = {"false": [], "true": []}
        self.last_throughput = 0.0
        self.prompt_total = 0
        self.cached_total = 0

    def record(self, streaming: bool, prompt: int, completion: int, cached: int, latency: float) -> None:
        key = "true" if streaming else "false"
        with self.lock:
            for name, inc in (("prompt_tokens", prompt), ("generation_tokens", completion), ("num_requests", 1)):
                self.counters[(name, key)] = self.counters.get((name, key), 0.0) + inc
            self.cached["device"] += cached
            self.prompt_total += prompt
            self.cached_total += cached
            self.e2e[key].append(latency)
            self.ttft[key].append(latency / max(completion, 1))
            if latency > 0:
                self.last_throughput = completion / latency


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


def _labels(**labels: str) -> str:
    parts = []
    for k in sorted(labels):
        v = str(labels[k]).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{k}="{v}"')
    return "{" + ",".join(parts) + "}"


class Engine:
    def __init__(self, args, module: str, compile_stage: bool = False, argv: Optional[List[str]] = None) -> None:
        self.args = args
        self.module = module
        self.argv = list(argv or [])
        self.compile_stage = compile_stage
        self.fails = failures()
        self.gpu = FakeGPU.from_env()
        self.model = ModelConfig.load(args.model_path)
        self.paths = CachePaths.from_env()
        self.status = "starting"
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.httpd: Optional[ThreadingHTTPServer] = None
        self.child: Optional[subprocess.Popen] = None
        self.t0 = time.time()
        self.ready_time: Optional[float] = None
        self.fatal: Optional[str] = None
        self.deadline: Optional[float] = None
        self.phases: Dict[str, float] = {}
        self.seen_prompts: List[Tuple[int, ...]] = []
        self.kv_tokens = 0
        self.mem: Dict[str, float] = {}
        self.cuda_graph_cfg = _cuda_graph_config(args.cuda_graph_config)
        self.served_model_name = args.served_model_name or args.model_path or "default"
        set_server_args(args)

    # ------------------------------------------------------------------ resolution
    @property
    def model_torch_dtype(self) -> str:
        d = self.args.dtype
        if d in ("half", "float16"):
            return "torch.float16"
        if d == "bfloat16":
            return "torch.bfloat16"
        if d in ("float", "float32"):
            return "torch.float32"
        cfg = self.model.torch_dtype
        return {"float16": "torch.float16", "float32": "torch.float32"}.get(cfg, "torch.bfloat16")

    @property
    def kv_torch_dtype(self) -> str:
        asked = self.args.kv_cache_dtype
        dtype = self.model_torch_dtype if asked == "auto" else KV_TORCH_DTYPE[asked]
        if "wrong_kv_dtype" in self.fails:
            dtype = "torch.float8_e4m3fn" if dtype in ("torch.bfloat16", "torch.float16") else "torch.bfloat16"
        return dtype

    @property
    def context_len(self) -> int:
        return int(self.args.context_length or self.model.max_position_embeddings)

    @property
    def chunked_prefill_size(self) -> int:
        if self.args.chunked_prefill_size is not None:
            return int(self.args.chunked_prefill_size)
        gb = self.gpu.total_gb
        if gb < 20:
            return 2048
        if gb < 60:
            return 4096
        if gb < 160:
            return 8192
        return 16384

    def _phase_backend(self, phase: str) -> Optional[str]:
        cfg = self.cuda_graph_cfg.get(phase)
        if isinstance(cfg, dict) and cfg.get("backend"):
            return cfg["backend"]  # --cuda-graph-config wins over every other flag
        a = self.args
        if a.disable_cuda_graph:
            return "disabled"
        if phase == "decode":
            if a.disable_decode_cuda_graph:
                return "disabled"
            return a.cuda_graph_backend_decode or "full"
        if a.disable_prefill_cuda_graph:
            return "disabled"
        return a.cuda_graph_backend_prefill or "breakable"

    @property
    def decode_graph_backend(self) -> str:
        return self._phase_backend("decode") or "full"

    @property
    def prefill_graph_backend(self) -> str:
        return self._phase_backend("prefill") or "breakable"

    @property
    def decode_batch_sizes(self) -> List[int]:
        cfg = self.cuda_graph_cfg.get("decode") or {}
        explicit = cfg.get("bs") or self.args.cuda_graph_bs_decode
        if explicit:
            return sorted(set(int(b) for b in explicit))
        max_bs = cfg.get("max_bs") or self.args.cuda_graph_max_bs_decode
        if not max_bs:
            big = self.args.tp_size >= 4
            gb = self.gpu.total_gb
            if gb < 20:
                max_bs = 8
            elif gb < 35:
                max_bs = 160 if big else 48
            elif gb < 60:
                max_bs = 160 if big else 32
            elif gb < 160:
                max_bs = 512 if big else 256
            else:
                max_bs = 512
            if self.args.max_running_requests:
                max_bs = min(max_bs, self.args.max_running_requests)
        return default_decode_batch_sizes(int(max_bs))

    @property
    def prefill_batch_sizes(self) -> List[int]:
        cfg = self.cuda_graph_cfg.get("prefill") or {}
        explicit = cfg.get("bs") or self.args.cuda_graph_bs_prefill
        if explicit:
            return sorted(set(int(b) for b in explicit))
        max_bs = int(cfg.get("max_bs") or self.args.cuda_graph_max_bs_prefill or self.chunked_prefill_size)
        sizes = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
        out = [b for b in sizes if b <= max_bs]
        if max_bs not in out and max_bs > 0:
            out.append(max_bs)
        return out

    def attention_backends(self) -> Tuple[str, str]:
        a = self.args
        default = a.attention_backend
        if default is None:
            if self.gpu.sm >= 100:
                default = "trtllm_mha"
            elif self.gpu.sm >= 90:
                default = "fa3"
            else:
                default = "flashinfer"
        return (a.prefill_attention_backend or default, a.decode_attention_backend or default)

    def uses_deep_gemm(self) -> bool:
        if self.gpu.sm < 90:
            return False
        if not (self.compile_stage or env_flag("SGLANG_ENABLE_JIT_DEEPGEMM", True)):
            return False
        a = self.args
        if a.fp8_gemm_runner_backend == "deep_gemm" or a.moe_runner_backend == "deep_gemm":
            return True
        return bool(
            self.model.is_fp8_checkpoint
            and self.model.weight_block_size
            and a.fp8_gemm_runner_backend == "auto"
        )

    def resolved_mem_fraction(self) -> float:
        if self.args.mem_fraction_static is not None:
            return float(self.args.mem_fraction_static)
        total_mb = self.gpu.total_gb * 1024
        graph = max(self.decode_batch_sizes or [0]) * 2 + len(self.prefill_batch_sizes) * 8
        reserved = 512 + max(self.chunked_prefill_size, 2048) * 1.5 + self.args.tp_size * self.args.pp_size / 8 * 1024 + graph
        if self.gpu.total_gb > 60:
            reserved = max(reserved, 10 * 1024)
        return round((total_mb - reserved) / total_mb, 3)

    def weights_gb(self) -> float:
        m = self.model
        h = m.hidden_size
        attn = h * m.num_heads * m.head_dim * 2 + 2 * h * m.num_kv_heads * m.head_dim
        mlp = 3 * h * (m.num_experts * m.moe_intermediate_size if m.is_moe else m.intermediate_size)
        params = m.num_layers * (attn + mlp) + 2 * m.vocab_size * h
        per_param = 1.0 if (m.is_fp8_checkpoint or self.args.quantization == "fp8") else _TORCH_BYTES[self.model_torch_dtype]
        return params * per_param / GiB / max(self.args.tp_size, 1)

    # ------------------------------------------------------------------ process plumbing
    def start_child(self) -> None:
        script = os.path.join(os.path.dirname(os.path.abspath(caches.__file__)), "scheduler_child.py")
        exe = sys.executable or "python3"
        self.child = subprocess.Popen(
            ["sglang::scheduler_TP0", script, str(os.getpid())],
            executable=exe,
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )

    def kill_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        try:
            child.kill()  # kill_process_tree(include_parent=False) uses SIGKILL
            child.wait(timeout=5)
        except Exception:
            pass

    def _sleep(self, seconds: float) -> None:
        end = time.time() + max(seconds, 0.0)
        while True:
            self._check_deadline()
            left = end - time.time()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.time() > self.deadline:
            raise TimeoutError("DeepGEMM Kernels compilation timeout.\n\nFeel free and please restart the command.")

    def hang_forever(self) -> None:
        while True:
            self._sleep(0.2)

    # ------------------------------------------------------------------ load phase
    def load(self) -> None:
        try:
            self._load()
        except (Terminate, TimeoutError):
            raise
        except Exception as exc:
            log = sched_log()
            log.error("Scheduler hit an exception: " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
            http_log().error("Received sigquit from a child process. It usually means the child failed.")
            raise FatalStartup(exc) from exc

    def _load(self) -> None:
        log = sched_log()
        a = self.args
        http_log().info(f"server_args={a!r}")
        if not a.model_path:
            raise ValueError("--model-path is required")
        if self.args.tokenizer_path is None:
            self.args.tokenizer_path = a.model_path
        t = time.time()
        total = self.gpu.total_gb
        log.info(f"Load weight begin. avail mem={total - 0.6:.2f} GB")
        if "exit_early" in self.fails:
            self._sleep(min(env_float("FAKE_SGLANG_LOAD_S", 0.2), 0.05))
            raise RuntimeError(
                "Fake SGLang injected failure during model load (FAKE_SGLANG_FAIL=exit_early)"
            )
        self._sleep(env_float("FAKE_SGLANG_LOAD_S", 0.2))
        weights = self.weights_gb()
        avail = total - 0.6 - weights
        self.phases["load_weight"] = time.time() - t
        log.info(
            f"Load weight end. elapsed={time.time() - t:.2f} s, type={self.model.architectures[0]}, "
            f"dtype={self.model_torch_dtype}, avail mem={avail:.2f} GB, mem usage={weights:.2f} GB."
        )

        t = time.time()
        mfs = self.resolved_mem_fraction()
        kv_dtype = self.kv_torch_dtype
        m = self.model
        kv_heads = max(m.num_kv_heads // max(a.tp_size, 1), 1)
        per_token_one = m.num_layers * kv_heads * m.head_dim * _TORCH_BYTES[kv_dtype]
        budget_gb = total * mfs - weights - 1.0
        if "oom" in self.fails or budget_gb <= 0:
            raise RuntimeError(
                "Not enough memory. Please try to increase --mem-fraction-static. "
                f"Current value: mem_fraction_static={mfs}"
            )
        tokens = int(budget_gb * GiB / (2 * per_token_one))
        if a.max_total_tokens:
            tokens = min(tokens, int(a.max_total_tokens))
        self.kv_tokens = tokens
        k_gb = tokens * per_token_one / GiB
        log.info(
            f"KV Cache is allocated. dtype: {kv_dtype}, #tokens: {tokens}, "
            f"K size: {k_gb:.2f} GB, V size: {k_gb:.2f} GB"
        )
        avail -= 2 * k_gb
        log.info(f"Memory pool end. avail mem={avail:.2f} GB")
        self.phases["kv_cache_allocation"] = time.time() - t
        self.mem = {"weight": weights, "kv": 2 * k_gb, "avail": avail}

        # Caches touched by any run.
        p = self.paths
        caches.cuda_compute_cache(p, self.gpu.arch, m.architectures[0])
        caches.ensure_flashinfer_workspace(p)
        caches.triton_driver_utils(p)
        page = a.page_size or 1
        caches.triton_kernel(p, "write_req_to_token_pool_triton", page)
        caches.triton_kernel(p, "get_last_loc_triton", page)
        if not env_flag("FAKE_SGLANG_NO_HELPER_COMPILE"):
            # @torch.compile(dynamic=True) helpers run without --enable-torch-compile (facts §10).
            for label, key in (
                ("sglang.srt.layers.sampler", (m.vocab_size,)),
                ("sglang.srt.layers.rotary_embedding", (m.head_dim, self.model_torch_dtype)),
            ):
                caches.inductor_graph(p, label, *key)
                caches.triton_kernel(p, "triton_poi_fused_0", label, *key)

        prefill_be, decode_be = self.attention_backends()
        self._attention_kernels(prefill_be, decode_be, kv_dtype)
        self._moe()
        self._deep_gemm()

        # CUDA graph capture (torch.compile runs only inside decode capture).
        bs_list = self.decode_batch_sizes
        if self.decode_graph_backend != "disabled":
            t = time.time()
            log.info(f"Capture target decode CUDA graph begin. backend={self.decode_graph_backend}")
            if a.enable_torch_compile and not self.compile_stage:
                mode = os.environ.get("SGLANG_TORCH_COMPILE_MODE") or "max-autotune-no-cudagraphs"
                for bs in bs_list:
                    if bs > a.torch_compile_max_bs:
                        continue
                    key = (m.architectures[0], m.hidden_size, m.num_layers, self.model_torch_dtype, kv_dtype, a.tp_size, bs, mode)
                    caches.inductor_graph(p, "model.forward", *key)
                    caches.triton_kernel(p, "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", *key)
                    caches.triton_kernel(p, "triton_poi_fused_cat_1", *key)
            graph_gb = 0.002 * len(bs_list) + 0.1
            avail -= graph_gb
            self.mem["graph"] = graph_gb
            self.phases["cuda_graph_decode"] = time.time() - t
            log.info(
                f"Capture target decode CUDA graph end. bs={bs_list}, elapsed={time.time() - t:.2f} s, "
                f"mem usage={graph_gb:.2f} GB, avail mem={avail:.2f} GB."
            )
        if self.prefill_graph_backend != "disabled":
            t = time.time()
            log.info(f"Capture target prefill CUDA graph begin. backend={self.prefill_graph_backend}")
            graph_gb = 0.05
            avail -= graph_gb
            log.info(
                f"Capture target prefill CUDA graph end. bs={self.prefill_batch_sizes}, "
                f"elapsed={time.time() - t:.2f} s, mem usage={graph_gb:.2f} GB, avail mem={avail:.2f} GB."
            )
        self.mem["avail"] = avail
        self.phases["scheduler_e2e"] = time.time() - self.t0

        if "hang_before_ready" in self.fails:
            self.hang_forever()

    def _attention_kernels(self, prefill_be: str, decode_be: str, kv_dtype: str) -> None:
        m = self.model
        p = self.paths
        hd = m.head_dim
        q = _TORCH_SHORT[self.model_torch_dtype]
        kv = _TORCH_SHORT[kv_dtype]
        cap = bool(m.get("attn_logit_softcapping", "final_logit_softcapping", default=None))
        common = (
            f"dtype_q_{q}_dtype_kv_{kv}_dtype_o_{q}_dtype_idx_i32_head_dim_qk_{hd}_head_dim_vo_{hd}"
            f"_posenc_0_use_swa_False_use_logits_cap_{cap}"
        )
        params = {"head_dim": hd, "dtype_q": q, "dtype_kv": kv, "logits_cap": cap}
        if "flashinfer" in (prefill_be, decode_be):
            caches.triton_kernel(p, "create_flashinfer_kv_indices_triton", self.args.page_size or 1)
        if decode_be == "flashinfer":
            caches.flashinfer_module(p, f"batch_decode_with_kv_cache_{common}", "batch_decode", params)
        if prefill_be == "flashinfer":
            caches.flashinfer_module(
                p, f"batch_prefill_with_kv_cache_{common}_f16qk_False_kv_stride_equal", "batch_prefill", params
            )
        for be, names in (
            (prefill_be, ("_fwd_kernel",)),
            (decode_be, ("_fwd_grouped_kernel_stage1", "_fwd_kernel_stage2")),
        ):
            if be == "triton":
                for name in names:
                    caches.triton_kernel(p, name, hd, kv, q, m.num_heads, m.num_kv_heads)

    def _moe(self) -> None:
        m = self.model
        a = self.args
        if not m.is_moe or a.moe_runner_backend not in ("auto", "triton"):
            return
        from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import (
            get_moe_configs,
        )

        ep = max(a.ep_size, 1)
        moe_tp = max(a.tp_size // ep, 1)
        E = m.num_experts // ep
        N = m.moe_intermediate_size // moe_tp
        dtype = None
        block = [0, 0]
        if m.is_fp8_checkpoint or a.quantization == "fp8":
            dtype = "fp8_w8a8"
            block = list(m.weight_block_size or [0, 0])
        elif a.quantization == "w8a8_int8":
            dtype = "int8_w8a8"
        get_moe_configs(E, N, dtype, block[0], block[1])
        caches.triton_kernel(self.paths, "fused_moe_kernel", E, N, dtype, tuple(block))

    def deep_gemm_shapes(self) -> List[Tuple[str, int, int, int]]:
        m = self.model
        a = self.args
        tp = max(a.tp_size, 1)
        h = m.hidden_size
        shapes: List[Tuple[str, int, int, int]] = []
        if a.fp8_gemm_runner_backend == "deep_gemm" or m.is_fp8_checkpoint:
            shapes += [
                ("GEMM_NT_F8F8BF16", (m.num_heads + 2 * m.num_kv_heads) * m.head_dim // tp, h, 1),
                ("GEMM_NT_F8F8BF16", h, m.num_heads * m.head_dim // tp, 1),
            ]
            if not m.is_moe:
                shapes += [
                    ("GEMM_NT_F8F8BF16", 2 * m.intermediate_size // tp, h, 1),
                    ("GEMM_NT_F8F8BF16", h, m.intermediate_size // tp, 1),
                ]
        if m.is_moe and a.moe_runner_backend == "deep_gemm":
            ep = max(a.ep_size, 1)
            moe_tp = max(tp // ep, 1)
            g = m.num_experts // ep
            inter = m.moe_intermediate_size // moe_tp
            for kind in ("GROUPED_GEMM_NT_F8F8BF16_CONTIG", "GROUPED_GEMM_NT_F8F8BF16_MASKED"):
                shapes += [(kind, 2 * inter, h, g), (kind, h, inter, g)]
        return shapes

    def _deep_gemm(self) -> None:
        if not self.uses_deep_gemm():
            return
        log = logging_dg()
        in_stage = self.compile_stage or env_flag("SGLANG_IN_DEEPGEMM_PRECOMPILE_STAGE")
        precompile = env_flag("SGLANG_JIT_DEEPGEMM_PRECOMPILE", True)
        fast = env_flag("SGLANG_JIT_DEEPGEMM_FAST_WARMUP")
        cps = self.chunked_prefill_size
        if cps < 1:
            m_max = 65536
        elif cps > 8192:
            m_max = min(2 * cps, 131072)
        else:
            m_max = 16384
        block_ms = [64, 128] + ([256] if m_max > 16384 else [])
        if fast:
            n_ms = 1024 + 2 * max(min(cps, 32768).bit_length() - 10, 0) * 100
        else:
            n_ms = m_max
        for kind, n, k, g in self.deep_gemm_shapes():
            if precompile:
                if not in_stage:
                    log.warning(ENTERING_DEEPGEMM)
                hint = (
                    ""
                    if in_stage
                    else " It only takes a little time (typically 1 sec) if you have run `python3 -m sglang.compile_deep_gemm`. "
                )
                log.info(f"Try DeepGEMM JIT Compiling for <{kind}> N={n}, K={k}, num_groups={g} with all Ms.{hint}")
                log.info(f"Required memory for warmup: {m_max * (n + k) * 3 / GiB:.2f}GB, Available memory: {self.mem.get('avail', 0):.2f}GB")
            t = time.time()
            _dirs, _cold = caches.deep_gemm_kernels(self.paths, kind, n, k, g, block_ms)
            if precompile:
                el = max(time.time() - t, 0.001)
                print(
                    f"DeepGEMM warmup: 100%|##########| {n_ms}/{n_ms} [00:{int(el):02d}<00:00, {n_ms / el:.2f}it/s]",
                    file=sys.stderr,
                    flush=True,
                )

    # ------------------------------------------------------------------ generation
    def _prompt_ids(self, text: Optional[str], ids: Optional[List[int]]) -> List[int]:
        if ids is not None:
            return list(ids)
        words = (text or "").split()
        return [(sum(map(ord, w)) * 31 + len(w)) % self.model.vocab_size for w in words]

    def generate_one(self, text: Optional[str], ids: Optional[List[int]], sp: Dict[str, Any], count: bool = True, streaming: bool = False) -> Dict[str, Any]:
        start = time.time()
        prompt = self._prompt_ids(text, ids)
        max_new = sp.get("max_new_tokens", 128)
        if max_new is None:
            max_new = 128
        if len(prompt) + max_new > self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {self.context_len} "
                f"tokens. You requested a total of {len(prompt) + max_new} tokens: {len(prompt)} tokens "
                f"from the input messages and {max_new} tokens for the completion. Please reduce the "
                "number of tokens in the input messages or the completion to fit within the limit."
            )
        seed = sum(prompt) + len(prompt)
        vocab = self.model.vocab_size
        out_ids = [(seed * 7919 + i * 104729) % vocab for i in range(max_new)]
        cached = 0
        if not self.args.disable_radix_cache:
            tup = tuple(prompt)
            with self.lock:
                for prev in self.seen_prompts:
                    n = 0
                    for x, y in zip(prev, tup):
                        if x != y:
                            break
                        n += 1
                    cached = max(cached, n)
                if count:
                    self.seen_prompts.append(tup)
            cached = min(cached, max(len(prompt) - 1, 0))
        gen_s = env_float("FAKE_SGLANG_GENERATE_S", 0.0)
        if gen_s > 0:
            time.sleep(gen_s)
        latency = time.time() - start
        result: Dict[str, Any] = {}
        if not self.args.skip_tokenizer_init:
            result["text"] = "".join(" " + _WORDS[i % len(_WORDS)] for i in out_ids)
        result["output_ids"] = out_ids
        result["meta_info"] = {
            "id": uuid.uuid4().hex,
            "finish_reason": {"type": "length", "length": max_new},
            "prompt_tokens": len(prompt),
            "weight_version": "default",
            "total_retractions": 0,
            "completion_tokens": max_new,
            "cached_tokens": cached,
            "reasoning_tokens": 0,
            "num_retractions": 0,
            "e2e_latency": latency,
            "response_sent_to_client_ts": time.time(),
        }
        if count:
            self.metrics.record(streaming, len(prompt), max_new, cached, latency)
        return result

    def run_named_warmups(self) -> None:
        names = [n.strip() for n in (self.args.warmups or "").split(",") if n.strip()]
        log = http_log()
        for name in names:
            if name == "voice_chat":
                for length in range(4, 2045, 4):
                    self.generate_one(None, [(i * 13) % 65536 % self.model.vocab_size for i in range(length)], {"max_new_tokens": 30})
            elif name == "prefill_shapes":
                length = 64
                while length <= min(32768, self.context_len - 1):
                    self.generate_one(None, [(i * 7) % self.model.vocab_size for i in range(length)], {"max_new_tokens": 1})
                    length *= 2
            elif name == "compile-deep-gemm" and self.compile_stage:
                for _ in range(max(self.args.dp_size, 1)):
                    self.generate_one(None, [0, 1, 2, 3], {"max_new_tokens": 8, "ignore_eos": True})
            else:
                log.warning(f"Could not find custom warmup {name}")
                continue
            log.info(f"Finished warmup {name}")

    # ------------------------------------------------------------------ HTTP
    def local_url(self) -> str:
        host = self.args.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.args.port}"

    def start_http(self) -> None:
        a = self.args
        family = socket.AF_INET6 if ":" in a.host else socket.AF_INET

        class _Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        handler = type("FakeSGLangHandler", (_Handler,), {"engine": self})
        try:
            self.httpd = _Server((a.host, a.port), handler)
        except OSError as exc:
            http_log().error(
                f"[Errno {exc.errno}] error while attempting to bind on address "
                f"({a.host!r}, {a.port}): {(exc.strerror or str(exc)).lower()}"
            )
            raise FatalStartup(exc) from exc
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="http").start()
        http_log().info(f"Uvicorn running on http://{a.host}:{a.port} (Press CTRL+C to quit)")

    def warmup_thread(self) -> threading.Thread:
        th = threading.Thread(target=self._warmup, daemon=True, name="warmup")
        th.start()
        return th

    def _request(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 30.0) -> Tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.local_url() + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.args.api_key:
            req.add_header("Authorization", f"Bearer {self.args.api_key}")
        try:
            with _NO_PROXY.open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _warmup(self) -> None:
        log = http_log()
        try:
            for _ in range(120):
                try:
                    status, _ = self._request("GET", "/model_info", timeout=5)
                    if status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            if self.args.skip_server_warmup:
                self._set_up()
                return
            self._sleep_plain(env_float("FAKE_SGLANG_WARMUP_S", 0.1))
            dp = max(self.args.dp_size, 1)
            sp = {"temperature": 0, "max_new_tokens": 8}
            if self.args.skip_tokenizer_init:
                body = {"input_ids": [10, 11, 12] if dp == 1 else [[10, 11, 12]] * dp, "sampling_params": sp}
            else:
                body = {"text": WARMUP_TEXT if dp == 1 else [WARMUP_TEXT] * dp, "sampling_params": sp}
            timeout = env_float("SGLANG_WARMUP_TIMEOUT", -1)
            status, resp = self._request("POST", "/generate", body, timeout=timeout if timeout > 0 else 600)
            if status != 200:
                raise RuntimeError(f"status {status}: {resp.decode(errors='replace')}")
            self._set_up()
        except Exception as exc:  # real: log and kill the whole process tree
            log.error(f"Initialization failed. warmup error: {exc}")
            self.fatal = "warmup"

    def _sleep_plain(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def _set_up(self) -> None:
        with self.lock:
            self.status = "up"
            self.ready_time = time.time()
            self.phases["tokenizer_e2e"] = self.ready_time - self.t0
        http_log().info("The server is fired up and ready to roll!")

    def wait_until_stopped(self) -> None:
        """Main-thread loop: returns only via Terminate or a fatal condition."""
        while True:
            if self.fatal:
                self.die_hard()
            child = self.child
            if child is not None and child.poll() is not None and self.status != "shutting_down":
                http_log().error("Received sigquit from a child process. It usually means the child failed.")
                self.die_hard()
            time.sleep(0.05)

    def die_hard(self) -> None:
        """kill_process_tree(os.getpid()): SIGKILL children, then ourselves."""
        sys.stderr.flush()
        sys.stdout.flush()
        self.kill_child()
        os.kill(os.getpid(), signal.SIGKILL)

    def shutdown(self) -> None:
        self.status = "shutting_down"
        if self.httpd is not None:
            try:
                self.httpd.shutdown()
                self.httpd.server_close()
            except Exception:
                pass
        self.kill_child()

    # ------------------------------------------------------------------ payloads
    def model_info(self) -> Dict[str, Any]:
        return {
            "model_path": self.args.model_path,
            "served_model_name": self.served_model_name,
            "tokenizer_path": self.args.tokenizer_path or self.args.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "load_format": self.args.load_format,
            "reasoning_parser": None,
            "tool_call_parser": None,
            "disaggregation_mode": "null",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": self.model.model_type,
            "architectures": self.model.architectures,
        }

    def server_info(self) -> Dict[str, Any]:
        info = self.args.to_dict()
        prefill_be, decode_be = self.attention_backends()
        info.update(
            {
                "mem_fraction_static": self.resolved_mem_fraction(),
                "chunked_prefill_size": self.chunked_prefill_size,
                "context_length": self.context_len,
                "attention_backend": self.args.attention_backend or decode_be,
                "prefill_attention_backend": prefill_be,
                "decode_attention_backend": decode_be,
                "served_model_name": self.served_model_name,
                "max_total_num_tokens": self.kv_tokens,
                "internal_states": [
                    {
                        "attention_backend": decode_be,
                        "kv_cache_dtype": self.kv_torch_dtype,
                        "cuda_graph_bs_decode": self.decode_batch_sizes
                        if self.decode_graph_backend != "disabled"
                        else [],
                        "last_gen_throughput": self.metrics.last_throughput,
                        "memory_usage": {
                            "weight": round(self.mem.get("weight", 0.0), 2),
                            "kvcache": round(self.mem.get("kv", 0.0), 2),
                            "graph": round(self.mem.get("graph", 0.0), 2),
                        },
                    }
                ],
                "version": sglang.__version__,
                "startup_time": (self.ready_time or time.time()) - self.t0,
                "launch_command": shlex.join([sys.executable or "python3", "-m", self.module] + self.argv),
            }
        )
        return info

    def v1_models(self) -> Dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_model_name,
                    "object": "model",
                    "created": int(self.t0),
                    "owned_by": "sglang",
                    "root": self.served_model_name,
                    "parent": None,
                    "max_model_len": self.context_len,
                }
            ],
        }

    def render_metrics(self) -> str:
        mt = self.metrics
        base = {"model_name": self.served_model_name, "engine_type": "unified"}
        sched = dict(base, tp_rank="0", pp_rank="0", moe_ep_rank="0")
        out: List[str] = []

        def family(name: str, kind: str, help_text: str, samples: List[Tuple[str, Dict[str, str], float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for sname, labels, value in samples:
                out.append(f"{sname}{_labels(**labels)} {_fmt(value)}")

        with mt.lock:
            streams = sorted({s for (_n, s) in mt.counters} or {"false"})
            for cname, help_text in (
                ("prompt_tokens", "Number of prefill tokens processed."),
                ("generation_tokens", "Number of generation tokens processed."),
                ("num_requests", "The number of requests processed."),
            ):
                full = f"sglang:{cname}_total"
                family(full, "counter", help_text, [
                    (full, dict(base, is_streaming=s), mt.counters.get((cname, s), 0.0)) for s in streams
                ])
            family("sglang:cached_tokens_total", "counter", "Number of cached prompt tokens.", [
                ("sglang:cached_tokens_total", dict(base, cache_source=src), v) for src, v in sorted(mt.cached.items())
            ])
            for hname, data, help_text in (
                ("sglang:e2e_request_latency_seconds", mt.e2e, "Histogram of End-to-end request latency in seconds"),
                ("sglang:time_to_first_token_seconds", mt.ttft, "Histogram of time to first token in seconds."),
            ):
                samples = []
                for s in streams:
                    values = data.get(s, [])
                    lab = dict(base, is_streaming=s)
                    for b in _HIST_BUCKETS + [float("inf")]:
                        samples.append((f"{hname}_bucket", dict(lab, le=_fmt(b)), sum(1 for v in values if v <= b)))
                    samples.append((f"{hname}_count", lab, len(values)))
                    samples.append((f"{hname}_sum", lab, sum(values)))
                family(hname, "histogram", help_text, samples)
            hit_rate = mt.cached_total / mt.prompt_total if mt.prompt_total else 0.0
            throughput = mt.last_throughput
        family("sglang:startup_time_seconds", "gauge", "Startup time of each phase in seconds.", [
            ("sglang:startup_time_seconds", dict(base, phase=ph), self.phases.get(ph, 0.0))
            for ph in ("load_weight", "kv_cache_allocation", "scheduler_e2e", "tokenizer_e2e")
        ])
        for gname, help_text, value in (
            ("sglang:num_running_reqs", "The number of running requests.", 0.0),
            ("sglang:num_queue_reqs", "The number of requests in the waiting queue.", 0.0),
            ("sglang:gen_throughput", "The generation throughput (token/s).", throughput),
            ("sglang:cache_hit_rate", "The prefix cache hit rate.", hit_rate),
            ("sglang:token_usage", "The token usage.", 0.0),
            ("sglang:num_used_tokens", "The number of used tokens.", 0.0),
            ("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.", float(self.kv_tokens)),
            ("sglang:weight_memory_usage_gb", "Weight memory usage in GB.", self.mem.get("weight", 0.0)),
            ("sglang:kv_cache_memory_usage_gb", "KV cache memory usage in GB.", self.mem.get("kv", 0.0)),
            ("sglang:graph_memory_usage_gb", "CUDA graph memory usage in GB.", self.mem.get("graph", 0.0)),
            ("sglang:is_cuda_graph", "Whether the batch is using CUDA graph.", 1.0 if self.decode_graph_backend != "disabled" else 0.0),
        ):
            family(gname, "gauge", help_text, [(gname, sched, value)])
        return "\n".join(out) + "\n"


def logging_dg():
    import logging

    return logging.getLogger("sglang.srt.layers.deep_gemm_wrapper.compile_utils")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""
    engine: Engine = None  # type: ignore[assignment]

    _OPEN_PATHS = ("/health", "/health_generate", "/ready", "/ping", "/metrics")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - our own access log
        pass

    def _access_log(self, code: int) -> None:
        if self.engine.args.log_level.lower() not in ("debug", "info"):
            return
        try:
            phrase = self.responses.get(code, ("",))[0]
            line = (
                f"[{stamp()}] INFO:     {self.client_address[0]}:{self.client_address[1]} - "
                f'"{self.command} {self.path} HTTP/1.1" {code} {phrase}\n'
            )
            sys.stdout.write(line)
            sys.stdout.flush()
        except Exception:
            pass

    def _send(self, code: int, payload: Any = None, content_type: str = "application/json", raw: Optional[bytes] = None) -> None:
        if raw is None:
            raw = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)
        self._access_log(code)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        eng = self.engine
        path = urlsplit(self.path).path
        routes = {
            "/ready": (("GET",), self._ready),
            "/health": (("GET",), self._health),
            "/health_generate": (("GET",), self._health),
            "/ping": (("GET",), self._ping),
            "/model_info": (("GET",), self._model_info),
            "/get_model_info": (("GET",), self._get_model_info),
            "/server_info": (("GET",), self._server_info),
            "/get_server_info": (("GET",), self._get_server_info),
            "/v1/models": (("GET",), self._v1_models),
            "/generate": (("POST", "PUT"), self._generate),
            "/flush_cache": (("GET", "POST"), self._flush_cache),
        }
        if eng.args.enable_metrics:
            routes["/metrics"] = (("GET",), self._metrics)
        body = self._body()
        route = routes.get(path)
        if route is None:
            self._send(404, {"detail": "Not Found"})
            return
        if method not in route[0]:
            self._send(405, {"detail": "Method Not Allowed"})
            return
        if eng.args.api_key and path not in self._OPEN_PATHS:
            if self.headers.get("authorization") != f"Bearer {eng.args.api_key}":
                self._send(401, {"error": "Unauthorized"})
                return
        try:
            route[1](body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- endpoints
    def _ready(self, _body: bytes) -> None:
        self._send(200 if self.engine.status == "up" else 503)

    def _health(self, _body: bytes) -> None:
        eng = self.engine
        if eng.status != "up":
            self._send(503)
            return
        if env_flag("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", True):
            eng.generate_one(None, [0], {"max_new_tokens": 1, "temperature": 0}, count=False)
        self._send(200)

    def _ping(self, _body: bytes) -> None:
        self._send(200 if self.engine.status == "up" else 503)

    def _model_info(self, _body: bytes) -> None:
        self._send(200, self.engine.model_info())

    def _get_model_info(self, _body: bytes) -> None:
        http_log().warning(
            "Endpoint '/get_model_info' is deprecated and will be removed in a future version. "
            "Please use '/model_info' instead."
        )
        self._send(200, self.engine.model_info())

    def _server_info(self, _body: bytes) -> None:
        self._send(200, self.engine.server_info())

    def _get_server_info(self, _body: bytes) -> None:
        http_log().warning(
            "Endpoint '/get_server_info' is deprecated and will be removed in a future version. "
            "Please use '/server_info' instead."
        )
        self._send(200, self.engine.server_info())

    def _v1_models(self, _body: bytes) -> None:
        self._send(200, self.engine.v1_models())

    def _metrics(self, _body: bytes) -> None:
        self._send(200, raw=self.engine.render_metrics().encode(), content_type="text/plain; version=0.0.4; charset=utf-8")

    def _flush_cache(self, _body: bytes) -> None:
        with self.engine.lock:
            self.engine.seen_prompts.clear()
        self._send(
            200,
            raw=(
                b"Cache flushed.\nPlease check backend logs for more details. (When there are running "
                b"or waiting requests, the operation will not be performed.)\n"
            ),
            content_type="text/plain; charset=utf-8",
        )

    def _generate(self, raw: bytes) -> None:
        eng = self.engine
        if eng.status == "up" and "generate_500" in eng.fails:
            self._send(500, {"error": {"message": "Internal server error (FAKE_SGLANG_FAIL=generate_500)"}})
            return
        if eng.status != "up" and "warmup_fail" in eng.fails:
            self._send(500, {"error": {"message": "Internal server error (FAKE_SGLANG_FAIL=warmup_fail)"}})
            return
        try:
            reqs, is_batch, stream = self._parse_generate(raw)
            results = [eng.generate_one(t, ids, sp, streaming=stream) for t, ids, sp in reqs]
        except ValueError as exc:
            self._send(400, {"error": str(exc)})
            return
        if stream and not is_batch:
            self._stream(results[0])
            return
        self._send(200, results if is_batch else results[0])

    def _stream(self, result: Dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        ids = result["output_ids"]
        pieces = [" " + w for w in result.get("text", "").split(" ")[1:]]
        for i in range(1, len(ids) + 1):
            chunk = dict(result)
            chunk["output_ids"] = ids[:i]
            if "text" in result:
                chunk["text"] = "".join(pieces[:i])
            meta = dict(result["meta_info"])
            meta["completion_tokens"] = i
            if i < len(ids):
                meta["finish_reason"] = None
            chunk["meta_info"] = meta
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True
        self._access_log(200)

    def _parse_generate(self, raw: bytes):
        eng = self.engine
        try:
            body = json.loads(raw.decode() or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("Request body must be a JSON object.")
        text = body.get("text")
        ids = body.get("input_ids")
        if (text is None and ids is None) or (text is not None and ids is not None):
            raise ValueError("Either text, input_ids or input_embeds should be provided.")
        if text is not None and eng.args.skip_tokenizer_init:
            raise ValueError("text input is not supported when --skip-tokenizer-init is set; pass input_ids.")
        if text is not None:
            if isinstance(text, str):
                items, is_batch = [(text, None)], False
            elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
                items, is_batch = [(t, None) for t in text], True
            else:
                raise ValueError("text must be a string or a non-empty list of strings.")
        else:
            if isinstance(ids, list) and ids and all(isinstance(x, list) for x in ids):
                seqs, is_batch = ids, True
            elif isinstance(ids, list):
                seqs, is_batch = [ids], False
            else:
                raise ValueError("input_ids must be a list of ints or a list of lists of ints.")
            vocab = eng.model.vocab_size
            for seq in seqs:
                if not seq:
                    raise ValueError("The input_ids is empty.")
                for x in seq:
                    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab:
                        raise ValueError(f"The input_ids {x!r} is out of the vocabulary range [0, {vocab}).")
            items = [(None, s) for s in seqs]
        sps = body.get("sampling_params") or {}
        if isinstance(sps, dict):
            sps = [sps] * len(items)
        elif isinstance(sps, list) and len(sps) == len(items) and all(isinstance(s, dict) for s in sps):
            pass
        else:
            raise ValueError("sampling_params must be an object or a list of objects, one per input.")
        for sp in sps:
            mnt = sp.get("max_new_tokens", 128)
            if mnt is not None and (isinstance(mnt, bool) or not isinstance(mnt, int) or mnt < 0):
                raise ValueError(f"max_new_tokens must be at least 0, got {mnt}.")
            temp = sp.get("temperature", 1.0)
            if isinstance(temp, bool) or not isinstance(temp, (int, float)) or temp < 0:
                raise ValueError(f"temperature must be non-negative, got {temp}.")
        stream = bool(body.get("stream", False))
        return [(t, i, sp) for (t, i), sp in zip(items, sps)], is_batch, stream

