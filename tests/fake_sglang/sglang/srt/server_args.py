"""Fake ``sglang.srt.server_args``: the real-shaped argparse parser.

Mirrors the parts of SGLang 0.5.23's parser listed in the fact sheet §2:

* ``argparse.ArgumentParser(prog="sglang serve")`` with the default
  ``allow_abbrev=True`` -> unique prefixes work, ambiguous ones exit 2
  (``--cuda-graph-max-bs`` could match ``--cuda-graph-max-bs-decode`` and
  ``--cuda-graph-max-bs-prefill``);
* every bool field is ``store_true`` (``--enable-metrics false`` exits 2 with
  ``sglang serve: error: unrecognized arguments: false``);
* ``human_readable_int`` values (``8k`` = 8000, ``8Ki`` = 8192);
* ``--disable-cuda-graph`` is a deprecated store_true that prints a warning.

Only the flags of §2 exist here.  The real parser has many more, so a real flag
missing from this table is rejected by the fake, and a prefix that is unique
here could be ambiguous against the real parser.  ``--quantization`` and
``--moe-runner-backend`` accept any string because the facts do not list
their full choice sets.

Usage, exactly like the real module::

    python -c "from sglang.srt.server_args import ServerArgs, prepare_server_args; prepare_server_args([...])"
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from sglang.srt.utils.common import human_readable_int

LOAD_FORMAT_CHOICES = [
    "auto", "pt", "safetensors", "instanttensor", "npcache", "dummy",
    "sharded_state", "presharded", "gguf", "expert_pack", "bitsandbytes",
    "mistral", "layered", "flash_rl", "remote", "remote_instance",
    "fastsafetensors", "private", "runai_streamer",
]
DTYPE_CHOICES = ["auto", "half", "float16", "bfloat16", "float", "float32"]
KV_CACHE_DTYPE_CHOICES = [
    "auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4",
    "fp4_mx_block16",
]
ATTENTION_BACKEND_CHOICES = [
    "triton", "torch_native", "flex_attention", "dsa", "nsa", "qsa", "dsv4",
    "compressed", "fa3", "fa4", "flashinfer", "llada2_cfg_flashinfer",
    "flashmla", "trtllm_mla", "cutedsl_mla", "tokenspeed_mla", "trtllm_mha",
    "hpc_ops", "minicpm_flashattn", "minicpm_flashinfer", "aiter", "wave",
    "intel_amx", "ascend", "intel_xpu",
]
SAMPLING_BACKEND_CHOICES = ["flashinfer", "pytorch", "ascend", "intel_xpu"]
FP8_GEMM_BACKEND_CHOICES = [
    "auto", "deep_gemm", "flashinfer_trtllm", "flashinfer_cutlass",
    "flashinfer_deepgemm", "flashinfer_cutedsl", "cutlass", "triton", "aiter",
]
GRAMMAR_BACKEND_CHOICES = ["xgrammar", "outlines", "llguidance", "none"]
MAMBA_BACKEND_CHOICES = ["triton", "flashinfer"]
CUDA_GRAPH_BACKEND_CHOICES = ["full", "breakable", "disabled"]


def cuda_graph_backend(value: str) -> str:
    if value == "tc_piecewise":
        raise argparse.ArgumentTypeError(
            "tc_piecewise was removed; use one of full, breakable, disabled"
        )
    return value


def _warn_deprecated_cli(old: str, replacement: str) -> None:
    print(
        f"WARNING: '{old}' is deprecated and will be removed in a future release. "
        f"Use {replacement} instead.",
        file=sys.stderr,
        flush=True,
    )


class DeprecatedStoreTrueAction(argparse.Action):
    """store_true that prints a deprecation warning (``server_args.py:408-416``)."""

    def __init__(self, option_strings, dest, *, replacement: str, **kwargs):
        self.replacement = replacement
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        _warn_deprecated_cli(option_string or self.dest, self.replacement)
        setattr(namespace, self.dest, True)


# (option strings, dest, add_argument kwargs).  Order only affects --help.
_FLAGS: List[tuple] = [
    (("--model-path", "--model"), "model_path", dict(type=str, default=None)),
    (("--tokenizer-path",), "tokenizer_path", dict(type=str, default=None)),
    (("--host",), "host", dict(type=str, default="127.0.0.1")),
    (("--port",), "port", dict(type=int, default=30000)),
    (("--tp-size", "--tensor-parallel-size"), "tp_size", dict(type=int, default=1)),
    (("--dp-size", "--data-parallel-size"), "dp_size", dict(type=int, default=1)),
    (("--pp-size", "--pipeline-parallel-size"), "pp_size", dict(type=int, default=1)),
    (("--ep-size", "--expert-parallel-size", "--ep"), "ep_size", dict(type=int, default=1)),
    (("--nccl-port",), "nccl_port", dict(type=int, default=None)),
    (("--base-gpu-id",), "base_gpu_id", dict(type=int, default=0)),
    (("--device",), "device", dict(type=str, default=None)),
    (("--load-format",), "load_format", dict(type=str, default="auto", choices=LOAD_FORMAT_CHOICES)),
    (("--skip-tokenizer-init",), "skip_tokenizer_init", dict(action="store_true")),
    (("--trust-remote-code",), "trust_remote_code", dict(action="store_true")),
    (("--revision",), "revision", dict(type=str, default=None)),
    (("--download-dir",), "download_dir", dict(type=str, default=None)),
    (("--model-loader-extra-config",), "model_loader_extra_config", dict(type=str, default="{}")),
    (("--dtype",), "dtype", dict(type=str, default="auto", choices=DTYPE_CHOICES)),
    (("--quantization",), "quantization", dict(type=str, default=None)),
    (("--kv-cache-dtype",), "kv_cache_dtype", dict(type=str, default="auto", choices=KV_CACHE_DTYPE_CHOICES)),
    (("--context-length",), "context_length", dict(type=human_readable_int, default=None)),
    (("--mem-fraction-static",), "mem_fraction_static", dict(type=float, default=None)),
    (("--max-running-requests",), "max_running_requests", dict(type=int, default=None)),
    (("--max-queued-requests",), "max_queued_requests", dict(type=int, default=None)),
    (("--max-total-tokens",), "max_total_tokens", dict(type=human_readable_int, default=None)),
    (("--chunked-prefill-size",), "chunked_prefill_size", dict(type=int, default=None)),
    (("--max-prefill-tokens",), "max_prefill_tokens", dict(type=human_readable_int, default=16384)),
    (("--page-size",), "page_size", dict(type=int, default=None)),
    (("--max-mamba-cache-size",), "max_mamba_cache_size", dict(type=int, default=None)),
    (("--disable-radix-cache",), "disable_radix_cache", dict(action="store_true")),
    (("--enable-hierarchical-cache", "--enable-hicache"), "enable_hierarchical_cache", dict(action="store_true")),
    (("--disable-overlap-schedule",), "disable_overlap_schedule", dict(action="store_true")),
    (("--attention-backend",), "attention_backend", dict(type=str, default=None, choices=ATTENTION_BACKEND_CHOICES)),
    (("--prefill-attention-backend",), "prefill_attention_backend", dict(type=str, default=None, choices=ATTENTION_BACKEND_CHOICES)),
    (("--decode-attention-backend",), "decode_attention_backend", dict(type=str, default=None, choices=ATTENTION_BACKEND_CHOICES)),
    (("--sampling-backend",), "sampling_backend", dict(type=str, default=None, choices=SAMPLING_BACKEND_CHOICES)),
    (("--moe-runner-backend",), "moe_runner_backend", dict(type=str, default="auto")),
    (("--fp8-gemm-backend",), "fp8_gemm_runner_backend", dict(type=str, default="auto", choices=FP8_GEMM_BACKEND_CHOICES)),
    (("--grammar-backend",), "grammar_backend", dict(type=str, default=None, choices=GRAMMAR_BACKEND_CHOICES)),
    (("--mamba-backend",), "mamba_backend", dict(type=str, default="triton", choices=MAMBA_BACKEND_CHOICES)),
    (("--cuda-graph-config",), "cuda_graph_config", dict(type=str, default=None)),
    (("--cuda-graph-backend-decode",), "cuda_graph_backend_decode", dict(type=cuda_graph_backend, default=None, choices=CUDA_GRAPH_BACKEND_CHOICES)),
    (("--cuda-graph-backend-prefill",), "cuda_graph_backend_prefill", dict(type=cuda_graph_backend, default=None, choices=CUDA_GRAPH_BACKEND_CHOICES)),
    (("--cuda-graph-max-bs-decode",), "cuda_graph_max_bs_decode", dict(type=int, default=None)),
    (("--cuda-graph-max-bs-prefill",), "cuda_graph_max_bs_prefill", dict(type=int, default=None)),
    (("--cuda-graph-max-seq-len-prefill",), "cuda_graph_max_seq_len_prefill", dict(type=int, default=None)),
    (("--cuda-graph-bs-decode",), "cuda_graph_bs_decode", dict(type=int, nargs="+", default=None)),
    (("--cuda-graph-bs-prefill",), "cuda_graph_bs_prefill", dict(type=int, nargs="+", default=None)),
    (("--disable-prefill-cuda-graph",), "disable_prefill_cuda_graph", dict(action="store_true")),
    (("--disable-decode-cuda-graph",), "disable_decode_cuda_graph", dict(action="store_true")),
    (("--disable-cuda-graph-padding",), "disable_cuda_graph_padding", dict(action="store_true")),
    (("--enable-torch-compile",), "enable_torch_compile", dict(action="store_true")),
    (("--enable-torch-compile-debug-mode",), "enable_torch_compile_debug_mode", dict(action="store_true")),
    (("--torch-compile-max-bs",), "torch_compile_max_bs", dict(type=int, default=32)),
    (("--disable-flashinfer-autotune",), "disable_flashinfer_autotune", dict(action="store_true")),
    (("--flashinfer-autotune-skip-ops",), "flashinfer_autotune_skip_ops", dict(type=str, nargs="+", default=None)),
    (("--enable-deterministic-inference",), "enable_deterministic_inference", dict(action="store_true")),
    (("--cpu-offload-gb",), "cpu_offload_gb", dict(type=int, default=0)),
    (("--enable-memory-saver",), "enable_memory_saver", dict(action="store_true")),
    (("--enable-metrics",), "enable_metrics", dict(action="store_true")),
    (("--enable-metrics-for-all-schedulers",), "enable_metrics_for_all_schedulers", dict(action="store_true")),
    (("--enable-trace",), "enable_trace", dict(action="store_true")),
    (("--log-level",), "log_level", dict(type=str, default="info")),
    (("--skip-server-warmup",), "skip_server_warmup", dict(action="store_true")),
    (("--warmups",), "warmups", dict(type=str, default=None)),
    (("--served-model-name",), "served_model_name", dict(type=str, default=None)),
    (("--api-key",), "api_key", dict(type=str, default=None)),
    (("--enable-cache-report",), "enable_cache_report", dict(action="store_true")),
    (("--watchdog-timeout",), "watchdog_timeout", dict(type=float, default=300)),
    (("--dist-timeout",), "dist_timeout", dict(type=int, default=None)),
    (("--random-seed",), "random_seed", dict(type=int, default=None)),
    # Deprecated; the field itself is no_cli in the real code (exec_.py:670).
    (("--disable-cuda-graph",), "disable_cuda_graph", dict(
        action=DeprecatedStoreTrueAction,
        replacement="--cuda-graph-backend-decode disabled --cuda-graph-backend-prefill disabled "
        "(or --disable-decode-cuda-graph --disable-prefill-cuda-graph)",
    )),
    # Only merged by prepare_server_args (server_args.py:683-690).
    (("--config",), "config", dict(type=str, default=None)),
]


def _field_defaults() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for _opts, dest, kwargs in _FLAGS:
        if dest == "config":
            continue
        if kwargs.get("action") in ("store_true",) or kwargs.get("action") is DeprecatedStoreTrueAction:
            out[dest] = False
        else:
            out[dest] = kwargs.get("default")
    return out


class ServerArgs:
    """Plain attribute bag with the real field names (``dest`` of each flag)."""

    def __init__(self, **kwargs: Any) -> None:
        defaults = _field_defaults()
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise TypeError(f"ServerArgs got unexpected fields: {unknown}")
        for key, value in defaults.items():
            setattr(self, key, kwargs.get(key, value))

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for opts, dest, kwargs in _FLAGS:
            parser.add_argument(*opts, dest=dest, **kwargs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerArgs":
        fields = _field_defaults()
        return cls(**{k: getattr(args, k) for k in fields if hasattr(args, k)})

    def to_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in _field_defaults()}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"ServerArgs({body})"

    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def make_parser(prog: Optional[str] = "sglang serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    ServerArgs.add_cli_args(parser)
    return parser


# --------------------------------------------------------------------------
# --config <yaml>: merged in front of the CLI arguments (CLI wins).  Stdlib
# only, so this reads a flat YAML mapping (or JSON): `key: value`, booleans,
# numbers, `[a, b]` and `- item` lists.
# --------------------------------------------------------------------------
def _yaml_scalar(text: str) -> Any:
    text = text.strip()
    if (text.startswith('"') and text.endswith('"')) or (text.startswith("'") and text.endswith("'")):
        return text[1:-1]
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("null", "~", ""):
        return None
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [] if not inner else [_yaml_scalar(p) for p in inner.split(",")]
    return text


def _load_config_file(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if content.lstrip().startswith("{"):
        data = json.loads(content)
        if not isinstance(data, dict):
            raise ValueError(f"Config file {path} must contain a mapping")
        return data
    data: Dict[str, Any] = {}
    last_key: Optional[str] = None
    for raw in content.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        stripped = line.strip()
        if stripped.startswith("- ") and last_key is not None:
            if not isinstance(data.get(last_key), list):
                data[last_key] = []
            data[last_key].append(_yaml_scalar(stripped[2:]))
            continue
        if ":" not in stripped:
            raise ValueError(f"Cannot parse config line: {raw!r}")
        key, value = stripped.split(":", 1)
        last_key = key.strip()
        data[last_key] = _yaml_scalar(value)
    return data


def _config_to_argv(config: Dict[str, Any]) -> List[str]:
    argv: List[str] = []
    for key, value in config.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv.append(flag)
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.extend([flag, json.dumps(value)])
        else:
            argv.extend([flag, str(value)])
    return argv


def _merge_config(argv: List[str]) -> List[str]:
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return argv
    rest: List[str] = []
    path = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            i += 1
            continue
        rest.append(arg)
        i += 1
    if path is None:
        return argv
    return _config_to_argv(_load_config_file(path)) + rest


def prepare_server_args(argv: List[str]) -> ServerArgs:
    """Parse like the real ``prepare_server_args``: exit 2 on a bad flag.
    Like the released package, it first makes sure its cache root under HOME
    exists, so a parser run as another user with root's HOME fails with
    PermissionError (not a flag problem)."""
    import os

    os.makedirs(os.environ.get("SGLANG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sglang"),
                exist_ok=True)
    parser = make_parser()
    argv = _merge_config(list(argv))
    args = parser.parse_args(argv)
    return ServerArgs.from_cli_args(args)

