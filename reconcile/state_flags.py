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


def server_argv(data: dict, model_path: str, stage_flags: list) -> list[str]:
    """Arguments for an SGLang server entry point: the common flags, every
    setting as an explicit flag, the stage's own flags, then extra_args."""
    server = data["server"]
    argv = ["--model-path", model_path, "--host", server["host"], "--port", str(server["port"]),
            "--tp-size", str(data["tp"])]
    argv += setting_flags(server["settings"])
    argv += list(stage_flags)
    argv += list(server["extra_args"])
    return argv


def cache_env(profiles: str, ready: dict | None = None) -> dict:
    """Cache routing for every process sglprep starts in the runtime.

    `profiles` is the profiles directory as the runtime sees it. `ready`:
    routing that a stage allows only once its cache is valid (env var → dir
    under profiles): SGLANG_MOE_CONFIG_DIR, once set, hides SGLang's packaged
    MoE configs entirely, so it is routed only after moe_tune succeeded.
    """
    env = {
        "TRITON_CACHE_DIR": posixpath.join(profiles, "triton"),
        "TORCHINDUCTOR_CACHE_DIR": posixpath.join(profiles, "torchinductor"),
        "FLASHINFER_WORKSPACE_BASE": posixpath.join(profiles, "flashinfer"),
        "SGLANG_DG_CACHE_DIR": posixpath.join(profiles, "deep_gemm"),
        "CUDA_CACHE_PATH": posixpath.join(profiles, "nv"),
    }
    for var, rel in (ready or {}).items():
        env[var] = posixpath.join(profiles, rel)
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
