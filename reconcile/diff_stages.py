"""Diffs for cache stages and their preflight checks: pure functions.

A stage's signature is the runtime facts (GPU, driver, CUDA, torch, triton,
sglang and the stage's own library), the model slug, tp, and every setting
that shapes the kernels that stage compiles. In `ensure` mode a stage whose
stored signature matches, with no in-progress marker, is a noop; otherwise it
runs and the reason names each key that differs, old → new.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from .diff_storage import lock_liveness
from .facts_host import LockFact
from .facts_runtime import RuntimeFacts
from .plan_model import Change
from .state_layout import CACHE_DIRS, STAGES
from .state_schema import SETTINGS_FIELDS

SERVER_STAGES = ("deep_gemm", "flashinfer", "inductor")  # stages that start an SGLang server
STAGE_LIBRARIES = {"deep_gemm": ("deep_gemm",), "moe_tune": (), "flashinfer": ("flashinfer",), "inductor": ()}
# Declared server settings that shape each stage's kernels. Settings not
# declared in the schema (free-form flags) count for every server stage.
STAGE_SETTINGS = {
    # DeepGEMM's M range follows chunked_prefill_size; memory bounds the sweep.
    "deep_gemm": ("chunked_prefill_size", "kv_cache_dtype", "mem_fraction_static", "context_length",
                  "max_prefill_tokens"),
    "moe_tune": (),
    # FlashInfer modules are keyed by dtypes and the attention backend.
    "flashinfer": ("kv_cache_dtype", "context_length", "max_prefill_tokens"),
    # torch.compile runs during decode graph capture; the captured batch sizes
    # follow the memory fraction and chunked prefill size.
    "inductor": ("cuda_graph", "mem_fraction_static", "chunked_prefill_size", "kv_cache_dtype", "context_length"),
}
STAGE_OPTIONS = {"deep_gemm": (), "moe_tune": ("script", "batch_sizes", "dtype", "tuner_args"),
                 "flashinfer": ("attention_backend", "via", "modules"), "inductor": ()}


def stage_names(data: dict) -> list[str]:
    """Built-in stages in the seeds' order, then custom stages by name."""
    return list(STAGES) + [f"custom/{name}" for name in sorted(data["caches"]["custom"])]


def is_custom(stage: str) -> bool:
    return stage.startswith("custom/")


def stage_options(data: dict, stage: str) -> dict:
    if is_custom(stage):
        return data["caches"]["custom"][stage.split("/", 1)[1]]
    return data["caches"][stage]


def cache_dir(stage: str) -> str:
    return CACHE_DIRS.get(stage) or f"profiles/custom/{stage.split('/', 1)[1]}"


def file_name(stage: str) -> str:
    """The stage's name in lock and marker file names (`custom.<name>`)."""
    return stage.replace("/", ".")


def flashinfer_direct(data: dict) -> bool:
    return data["caches"]["flashinfer"]["via"] == "direct"


def is_server_stage(stage: str, data: dict) -> bool:
    """Stages that start an SGLang server (and so need the port and flags)."""
    return stage in SERVER_STAGES and not (stage == "flashinfer" and flashinfer_direct(data))


def needs_sglang(stage: str, data: dict) -> bool:
    return stage in STAGES and not (stage == "flashinfer" and flashinfer_direct(data))


class SignatureFact(NamedTuple):
    path: str
    kind: str  # missing | ok | unparseable
    signature: dict = {}
    written_at: str = ""
    error: str = ""


def stage_signature(stage: str, data: dict, model_slug: str, runtime: RuntimeFacts) -> dict:
    """The signature `stage` must have been built for (pure)."""
    if is_custom(stage):
        import json

        from .digest import sha256_hex

        options = stage_options(data, stage)
        sig = runtime.signature()
        sig.update(options["signature"])
        sig["command_sha"] = sha256_hex(json.dumps(options["command"]).encode())
        for key, value in sorted(options["env"].items()):
            sig[f"env.{key}"] = value
        return sig
    sig = {"model_slug": model_slug, "tp": data["tp"]}
    sig.update(runtime.signature())
    for lib in STAGE_LIBRARIES[stage]:
        sig[f"{lib}_version"] = runtime.version(lib)
    settings = data["server"]["settings"]
    for key in STAGE_SETTINGS[stage]:
        sig[key] = settings.get(key)
    if is_server_stage(stage, data):
        for key in sorted(k for k in settings if k not in SETTINGS_FIELDS):
            sig[key] = settings[key]
        if data["server"]["extra_args"]:
            sig["extra_args"] = list(data["server"]["extra_args"])
    options = data["caches"][stage]
    for key in STAGE_OPTIONS[stage]:
        sig[key] = options.get(key)
    for key, value in sorted(options.get("env", {}).items()):
        sig[f"env.{key}"] = value
    return sig


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def signature_delta(old: dict, new: dict) -> list[str]:
    """`key old → new` for each differing key, in the new signature's order."""
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            before = _show(old[key]) if key in old else "(none)"
            after = _show(new[key]) if key in new else "(none)"
            out.append(f"{key} {before} → {after}")
    return out


def stage_depends(stage: str, port: int, container: str = "", server: bool = False) -> tuple:
    deps = [f"directory:{'profiles' if is_custom(stage) else cache_dir(stage)}", "directory:profiles/.locks",
            "directory:profiles/.in_progress", "check:runtime", "check:free_disk"]
    deps += [f"container:{container}"] if container else []
    if stage == "flashinfer":
        deps += ["check:flashinfer_toolchain", "flashinfer:incomplete"]
    if server:
        deps += ["check:gpu_count", "check:model", "check:server_flags", f"port:{port}",
                 "directory:telemetry/container_runs", "directory:telemetry/logs"]
    if stage == "moe_tune":
        deps += ["check:gpu_count", "check:model"]
    return tuple(deps)


def diff_stage(stage: str, mode: str, want: dict, runtime: RuntimeFacts, sig: SignatureFact,
               marker: LockFact | None, hostname: str, port: int, cache_problem: str = "",
               option_problem: str = "", container: str = "", server: bool = False) -> Change:
    """`stage:<name>`. `cache_problem`: a host-side reason the cache will
    rebuild although its signature matches (FlashInfer sources touched, cache
    moved). `option_problem`: the stage's options cannot work (blocked)."""
    address = f"stage:{stage}"
    depends = stage_depends(stage, port, container, server) if mode != "skip" else ()
    before = sig.signature if sig.kind == "ok" else None
    observed = {"mode": mode, "signature": sig.kind, "stored": before,
                "marker": marker.owner_pid if marker else None, "cache_problem": cache_problem}
    common = dict(depends_on=depends, before=before, after=want if mode != "skip" else None, observed=observed)
    if mode == "skip":
        return Change(address, "noop", "skipped", f"skipped (caches.{stage.replace('/', '.')}: skip)", show=False,
                      **common)
    if runtime.status == "pending" and not option_problem:
        return Change(address, "run", "container_pending", runtime.problem, **common)
    if runtime.status != "ok":
        return Change(address, "blocked", "runtime_unavailable", f"{runtime.problem} (see check:runtime)", **common)
    if option_problem:
        return Change(address, "blocked", "invalid_options", option_problem, **common)
    if marker is not None and marker.kind == "ok":
        state, why = lock_liveness(marker, hostname)
        if state == "live":
            return Change(address, "blocked", "in_progress",
                          f"another run is priming it, {why} → wait for it to finish", **common)
    if mode == "rebuild":
        return Change(address, "run", "rebuild", f"rebuild requested (caches.{stage.replace('/', '.')}: rebuild)",
                      **common)
    if marker is not None:
        started = marker.started_at or "?"
        who = f"pid {marker.owner_pid}" if marker.kind == "ok" else "unreadable marker"
        return Change(address, "run", "partial",
                      f"partial cache: an earlier run was interrupted ({who}, started {started})", **common)
    if sig.kind == "missing":
        return Change(address, "run", "no_signature", "never primed (no signature.json)", **common)
    if sig.kind == "unparseable":
        return Change(address, "run", "signature_unreadable", f"signature.json unreadable ({sig.error})", **common)
    delta = signature_delta(sig.signature, want)
    if delta:
        return Change(address, "run", "signature_changed", "signature " + ", ".join(delta), **common)
    if cache_problem:
        return Change(address, "run", "cache_stale", cache_problem, **common)
    return Change(address, "noop", "valid_signature", "valid_signature", **common)


# ---------------------------------------------------------------------- checks

def diff_runtime(runtime: RuntimeFacts, python: str, kind: str, needs_sglang: bool = True) -> Change:
    observed = {"status": runtime.status, "problem": runtime.problem, **runtime.signature(),
                "flashinfer": runtime.version("flashinfer"), "deep_gemm": runtime.version("deep_gemm")}
    if runtime.status == "pending":
        return Change("check:runtime", "noop", "pending", runtime.problem, observed=observed)
    if runtime.status == "ok" and needs_sglang and not runtime.version("sglang"):
        return Change("check:runtime", "blocked", "runtime_unavailable",
                      f"sglang is not installed in runtime python {python!r} → install sglang in that interpreter "
                      f"or set runtime.python", observed=observed)
    if runtime.status != "ok":
        fix = ("install sglang in that interpreter or set runtime.python" if "sglang" in runtime.problem
               else "run on a GPU host (or skip the cache stages)")
        return Change("check:runtime", "blocked", "runtime_unavailable", f"{runtime.problem} → {fix}",
                      observed=observed)
    sig = runtime.signature()
    gpu = f"{sig['gpu_count']}× {sig['device_name']} ({sig['compute_capability']})"
    parts = [f"sglang {sig['sglang_version'] or 'not installed'}", f"torch {sig['torch_version'] or '?'}",
             f"CUDA {sig['cuda'] or '?'}", gpu, f"driver {sig['driver_version']}"]
    return Change("check:runtime", "noop", "ok", f"{kind} runtime {python}: " + ", ".join(parts),
                  observed=observed, after=observed)


def diff_gpu_count(tp: int, runtime: RuntimeFacts) -> Change:
    count = len(runtime.gpus)
    observed = {"tp": tp, "gpus": count}
    if runtime.status == "ok" and tp > count:
        return Change("check:gpu_count", "blocked", "gpu_count",
                      f"tp {tp} needs {tp} GPUs; the runtime sees {count} → set tp: {count}",
                      depends_on=("check:runtime",), observed=observed)
    return Change("check:gpu_count", "noop", "ok", f"tp {tp} ≤ {count} GPUs", depends_on=("check:runtime",),
                  observed=observed, show=False)


class ModelFact(NamedTuple):
    path: str  # config.json as read on the host
    kind: str  # ok | missing | unparseable
    max_context: int = 0  # max_position_embeddings (0 when absent)
    error: str = ""


def diff_model(model_path: str, context_length: int | None, fact: ModelFact) -> Change:
    observed = {"kind": fact.kind, "max_context": fact.max_context, "context_length": context_length}
    if fact.kind == "missing":
        return Change("check:model", "blocked", "model_missing",
                      f"{fact.path} not found → put the model at {model_path} (as the runtime sees it)",
                      observed=observed)
    if fact.kind == "unparseable":
        return Change("check:model", "blocked", "model_config_unreadable", f"{fact.path}: {fact.error}",
                      observed=observed)
    if context_length and fact.max_context and context_length > fact.max_context:
        return Change("check:model", "blocked", "context_too_long",
                      f"server.settings.context_length {context_length} exceeds the model's "
                      f"max_position_embeddings {fact.max_context} → set context_length ≤ {fact.max_context}",
                      observed=observed)
    return Change("check:model", "noop", "ok", f"{model_path}: max context {fact.max_context or '?'}",
                  observed=observed, show=False)


def diff_server_flags(results: dict, sglang_version: str) -> Change:
    """`check:server_flags`: the installed SGLang's parser on each stage's argv.
    `results`: stage -> "" (accepted) or the parser's error line."""
    rejected = {stage: err for stage, err in results.items() if err}
    observed = {"sglang": sglang_version, "rejected": rejected}
    if rejected:
        first_stage, err = next(iter(rejected.items()))
        return Change("check:server_flags", "blocked", "flags_rejected",
                      f"sglang {sglang_version} rejects the {first_stage} server flags: {err} → fix server.settings "
                      f"or server.extra_args", depends_on=("check:runtime",), observed=observed)
    return Change("check:server_flags", "noop", "ok",
                  f"sglang {sglang_version} accepts the flags of {', '.join(results) or 'no stage'}",
                  depends_on=("check:runtime",), observed=observed, show=False)


def _major_minor(version: str) -> tuple:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def diff_flashinfer_toolchain(runtime: RuntimeFacts, kind: str) -> Change:
    """`check:flashinfer_toolchain`: FlashInfer JIT needs nvcc and ninja in the
    runtime, and a CUDA runtime library (pip's) not older than nvcc: a pip
    libcudart older than the system nvcc makes sm90 builds hang or fail with
    undefined symbols (the seeds' precompile guide)."""
    observed = {"nvcc": runtime.nvcc_version, "ninja": bool(runtime.ninja),
                "cuda_runtime": runtime.version("cuda_runtime")}
    where = "the container" if kind == "docker" else "the runtime"
    if not runtime.nvcc:
        return Change("check:flashinfer_toolchain", "blocked", "nvcc_missing",
                      f"no nvcc in {where}: FlashInfer cannot JIT-compile → install the CUDA toolkit there "
                      "(or put its bin/ on runtime.env PATH, CUDA_HOME)", depends_on=("check:runtime",),
                      observed=observed)
    if not runtime.ninja:
        return Change("check:flashinfer_toolchain", "blocked", "ninja_missing",
                      f"no ninja in {where}: FlashInfer cannot JIT-compile → pip install ninja (or apt install "
                      "ninja-build) in that runtime", depends_on=("check:runtime",), observed=observed)
    pip_rt = runtime.version("cuda_runtime")
    if pip_rt and runtime.nvcc_version and _major_minor(pip_rt) < _major_minor(runtime.nvcc_version):
        return Change("check:flashinfer_toolchain", "blocked", "libcudart_older_than_nvcc",
                      f"pip's CUDA runtime {pip_rt} is older than the system nvcc {runtime.nvcc_version}: kernels "
                      f"nvcc builds need symbols it lacks → upgrade nvidia-cuda-runtime to {runtime.nvcc_version} "
                      f"(or use a matching CUDA toolkit)", depends_on=("check:runtime",), observed=observed)
    return Change("check:flashinfer_toolchain", "noop", "ok",
                  f"nvcc {runtime.nvcc_version or '?'}, ninja, CUDA runtime {pip_rt or 'system'}",
                  depends_on=("check:runtime",), observed=observed, show=False)


def diff_flashinfer_incomplete(modules: tuple, locks: tuple, cached_ops: str = "") -> Change:
    """`flashinfer:incomplete`: module builds without their .so (a killed or
    failed JIT) and the build locks such builds left behind with nobody
    holding them. FlashInfer's filelock leaves a lock file after every build,
    so a free lock of a complete module is normal and left alone; a module
    whose lock is held is being built right now and is left alone too."""
    complete = {m.name for m in modules if m.has_so}
    held = {os.path.basename(path)[: -len(".lock")] for path, is_held in locks if is_held}
    broken = [m.name for m in modules if not m.has_so and m.name not in held]
    stale = [path for path, is_held in locks if not is_held
             and os.path.basename(path)[: -len(".lock")] not in complete
             and os.path.basename(path) != "flashinfer_jit.lock"]
    observed = {"broken": broken, "stale_locks": stale, "cached_ops": cached_ops}
    if not broken and not stale:
        return Change("flashinfer:incomplete", "noop", "ok", "no incomplete builds", observed=observed, show=False)
    parts = []
    if broken:
        parts.append(f"{len(broken)} module build(s) without their .so ({', '.join(broken[:2])}"
                     f"{', …' if len(broken) > 2 else ''})")
    if stale:
        parts.append(f"{len(stale)} build lock(s) of unfinished modules whose holder is gone")
    return Change("flashinfer:incomplete", "delete", "incomplete", "; ".join(parts), before=observed,
                  observed=observed, depends_on=("directory:profiles/flashinfer",))
