"""Shared helpers of the fake: env knobs, logging, launch log, fake model/GPU."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import sglang

TRUE_STRINGS = ("1", "true", "yes", "on", "y")

FAILURE_MODES = (
    "exit_early",
    "hang_before_ready",
    "oom",
    "wrong_kv_dtype",
    "ignore_sigterm",
    "generate_500",
    "warmup_fail",
)


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in TRUE_STRINGS


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return float(value)


def failures() -> set:
    raw = os.environ.get("FAKE_SGLANG_FAIL", "")
    modes = {m.strip() for m in raw.replace(";", ",").split(",") if m.strip()}
    unknown = modes - set(FAILURE_MODES)
    if unknown:
        print(
            f"[fake-sglang] unknown FAKE_SGLANG_FAIL mode(s) {sorted(unknown)}; "
            f"known: {', '.join(FAILURE_MODES)}",
            file=sys.stderr,
            flush=True,
        )
    return modes


# --------------------------------------------------------------------------
# Launch log
# --------------------------------------------------------------------------
_LOGGED_ENV_PREFIXES = (
    "SGLANG_", "FLASHINFER_", "TORCHINDUCTOR_", "TRITON_", "CUDA_", "DG_",
    "FAKE_", "TILELANG_", "TVM_FFI_",
)
_LOGGED_ENV_KEYS = ("HOME", "MAX_JOBS", "PYTHONPATH")


def record_launch(module: str, argv: List[str]) -> None:
    """Append one JSON line to ``$FAKE_SGLANG_LAUNCH_LOG`` (if set).

    ``env`` holds the caller-provided values (before ``import sglang`` applied
    its setdefault redirect) of the cache/JIT related variables; ``cache_dirs``
    holds the directories this process will actually use.
    """
    path = os.environ.get("FAKE_SGLANG_LAUNCH_LOG")
    if not path:
        return
    env = {
        k: v
        for k, v in sorted(sglang._ORIGINAL_ENV.items())
        if k.startswith(_LOGGED_ENV_PREFIXES) or k in _LOGGED_ENV_KEYS
    }
    from sglang._fake.caches import CachePaths

    record = {
        "module": module,
        "argv": list(argv),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
        "time": time.time(),
        "env": env,
        "cache_dirs": CachePaths.from_env().as_dict(),
    }
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: safe across processes
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Logging in sglang's format: "[2026-11-22 10:00:00 TP0] message" on stderr
# --------------------------------------------------------------------------
SCHEDULER_LOGGER = "sglang.srt.managers.scheduler"
HTTP_LOGGER = "sglang.srt.entrypoints.http_server"
_SCHEDULER_SIDE = (
    "sglang.srt.managers.scheduler",
    "sglang.srt.model_executor",
    "sglang.srt.mem_cache",
    "sglang.srt.layers",
)


class _PrefixFilter(logging.Filter):
    def __init__(self, rank_prefix: str) -> None:
        super().__init__()
        self.rank_prefix = rank_prefix

    def filter(self, record: logging.LogRecord) -> bool:
        record.sgl_prefix = self.rank_prefix if record.name.startswith(_SCHEDULER_SIDE) else ""
        return True


def setup_logging(log_level: str, dp_size: int = 1) -> None:
    level = getattr(logging, str(log_level).upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s%(sgl_prefix)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(_PrefixFilter(" DP0 TP0" if dp_size > 1 else " TP0"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


def sched_log() -> logging.Logger:
    return logging.getLogger(SCHEDULER_LOGGER)


def http_log() -> logging.Logger:
    return logging.getLogger(HTTP_LOGGER)


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------
# Fake GPU and model
# --------------------------------------------------------------------------
GiB = 1 << 30


@dataclass
class FakeGPU:
    name: str
    arch: str  # FlashInfer arch dir name, e.g. "90a"
    total_gb: float

    @classmethod
    def from_env(cls) -> "FakeGPU":
        return cls(
            name=os.environ.get("FAKE_SGLANG_GPU_NAME") or "NVIDIA H100 80GB HBM3",
            arch=os.environ.get("FAKE_SGLANG_GPU_ARCH") or "90a",
            total_gb=env_float("FAKE_SGLANG_GPU_MEM_GB", 79.19),
        )

    @property
    def sm(self) -> int:
        digits = "".join(ch for ch in self.arch if ch.isdigit())
        return int(digits or 0)


@dataclass
class ModelConfig:
    raw: Dict[str, Any] = field(default_factory=dict)
    found: bool = False
    path: Optional[str] = None

    @classmethod
    def load(cls, model_path: Optional[str]) -> "ModelConfig":
        if model_path:
            cfg = os.path.join(model_path, "config.json")
            if os.path.isfile(cfg):
                with open(cfg, encoding="utf-8") as f:
                    return cls(raw=json.load(f), found=True, path=cfg)
        return cls()

    def get(self, *names: str, default: Any = None) -> Any:
        for name in names:
            if name in self.raw and self.raw[name] is not None:
                return self.raw[name]
        text = self.raw.get("text_config") or {}
        for name in names:
            if name in text and text[name] is not None:
                return text[name]
        return default

    @property
    def architectures(self) -> List[str]:
        return list(self.get("architectures", default=["LlamaForCausalLM"]))

    @property
    def model_type(self) -> str:
        return str(self.get("model_type", default="llama"))

    @property
    def hidden_size(self) -> int:
        return int(self.get("hidden_size", default=4096))

    @property
    def num_layers(self) -> int:
        return int(self.get("num_hidden_layers", default=32))

    @property
    def num_heads(self) -> int:
        return int(self.get("num_attention_heads", default=32))

    @property
    def num_kv_heads(self) -> int:
        return int(self.get("num_key_value_heads", default=self.num_heads))

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", default=self.hidden_size // max(self.num_heads, 1)))

    @property
    def intermediate_size(self) -> int:
        return int(self.get("intermediate_size", default=14336))

    @property
    def vocab_size(self) -> int:
        return int(self.get("vocab_size", default=128256))

    @property
    def max_position_embeddings(self) -> int:
        return int(self.get("max_position_embeddings", default=131072))

    @property
    def torch_dtype(self) -> str:
        return str(self.get("torch_dtype", "dtype", default="bfloat16"))

    @property
    def num_experts(self) -> int:
        return int(self.get("num_experts", "num_local_experts", "n_routed_experts", default=0) or 0)

    @property
    def moe_intermediate_size(self) -> int:
        return int(self.get("moe_intermediate_size", default=self.intermediate_size))

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def quantization_config(self) -> Dict[str, Any]:
        q = self.get("quantization_config", default=None)
        return q if isinstance(q, dict) else {}

    @property
    def weight_block_size(self) -> Optional[List[int]]:
        block = self.quantization_config.get("weight_block_size")
        return list(block) if block else None

    @property
    def is_fp8_checkpoint(self) -> bool:
        return str(self.quantization_config.get("quant_method", "")).lower() == "fp8"
