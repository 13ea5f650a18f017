"""Desired server command lines and cache routing, derived from the state.

Every setting becomes an explicit CLI flag with the spelling released SGLang
accepts (reference: sglang-facts.md): booleans are bare store_true flags
(`--enable-metrics`, never `--enable-metrics false`), token counts are plain
integers, CUDA graphs are switched with the per-phase backend flags rather
than the deprecated `--disable-cuda-graph`.
"""
from __future__ import annotations

import posixpath

# sglang's own default when no flag is given; the flag is then omitted.
CUDA_GRAPH_OFF = ["--cuda-graph-backend-decode", "disabled", "--cuda-graph-backend-prefill", "disabled"]

# What each KV-cache dtype setting must show in the server log
# (`KV Cache is allocated. dtype: torch.float8_e4m3fn, ...`).
KV_LOG_DTYPES = {"fp8_e4m3": ("torch.float8_e4m3fn", "torch.float8_e4m3fnuz"),
                 "fp8_e5m2": ("torch.float8_e5m2", "torch.float8_e5m2fnuz"),
                 "bf16": ("torch.bfloat16",), "bfloat16": ("torch.bfloat16",)}


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def setting_flags(settings: dict) -> list[str]:
    argv: list[str] = []
    for key, value in settings.items():
        if key == "cuda_graph":
            if value is False:
                argv += CUDA_GRAPH_OFF
            continue
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag_name(key))
        elif isinstance(value, list):
            argv += [flag_name(key)] + [str(v) for v in value]
        else:
            argv += [flag_name(key), str(value)]
    return argv


def server_argv(stage: str, data: dict, model_path: str, timeout_s: float) -> list[str]:
    """Arguments for `python -m sglang.launch_server` (or `compile_deep_gemm`)."""
    server = data["server"]
    argv = ["--model-path", model_path, "--host", server["host"], "--port", str(server["port"]),
            "--tp-size", str(data["tp"])]
    argv += setting_flags(server["settings"])
    if stage == "deep_gemm":
        argv += ["--timeout", str(int(timeout_s))]
    else:
        argv += ["--enable-metrics", "--watchdog-timeout", str(int(timeout_s))]
        if stage == "flashinfer" and data["caches"]["flashinfer"].get("attention_backend"):
            argv += ["--attention-backend", data["caches"]["flashinfer"]["attention_backend"]]
        if stage == "inductor":
            argv.append("--enable-torch-compile")
    argv += list(server["extra_args"])
    return argv


def server_module(stage: str) -> str:
    return "sglang.compile_deep_gemm" if stage == "deep_gemm" else "sglang.launch_server"


def cache_env(profiles: str, moe_config_ready: bool) -> dict:
    """Cache routing for every process sglprep starts in the runtime.

    `profiles` is the profiles directory as the runtime sees it.
    SGLANG_MOE_CONFIG_DIR is set only once its configs/triton_<ver>/ tree
    holds tuned configs: set, it hides SGLang's packaged configs entirely.
    """
    env = {
        "TRITON_CACHE_DIR": posixpath.join(profiles, "triton"),
        "TORCHINDUCTOR_CACHE_DIR": posixpath.join(profiles, "torchinductor"),
        "FLASHINFER_WORKSPACE_BASE": posixpath.join(profiles, "flashinfer"),
        "SGLANG_DG_CACHE_DIR": posixpath.join(profiles, "deep_gemm"),
        "CUDA_CACHE_PATH": posixpath.join(profiles, "nv"),
    }
    if moe_config_ready:
        env["SGLANG_MOE_CONFIG_DIR"] = posixpath.join(profiles, "moe_configs")
    return env


def flashinfer_arch(compute_cap: str) -> str:
    """FlashInfer's arch directory for a compute capability ("9.0" → "90a")."""
    major, _, minor = compute_cap.partition(".")
    arch = f"{major}{minor or '0'}"
    return arch + "a" if major.isdigit() and int(major) >= 9 and major != "12" else arch


def flashinfer_cached_ops(profiles: str, flashinfer_version: str, compute_cap: str) -> str:
    return posixpath.join(profiles, "flashinfer", ".cache", "flashinfer", flashinfer_version,
                          flashinfer_arch(compute_cap), "cached_ops")


def triton_config_dirname(triton_version: str) -> str:
    return "triton_" + triton_version.split("+")[0].replace(".", "_")
