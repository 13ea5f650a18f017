"""Preflight checks of the cache stages: pure diffs of runtime and model facts.

`check:runtime` (the interpreter, sglang, GPUs), `check:gpu_count` (tp), 
`check:model` (config.json vs context_length), `check:server_flags` (SGLang's
own parser on each server stage's argv). Kind-specific checks live with their
kind (FlashInfer's toolchain check in stages/flashinfer.py).
"""
from __future__ import annotations

from ..facts_runtime import RuntimeFacts
from ..facts_stages import ModelFact
from ..plan_model import Change


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


def diff_server_flags(check, sglang_version: str, stages: list) -> Change:
    """`check:server_flags`: the installed SGLang's parser on each stage's
    argv (`check`, a FlagCheck). Flags the parser rejects block with the
    flag named; a parser that could not run blocks with its cause and never
    advises changing flags that may well be right."""
    observed = {"sglang": sglang_version, "ran": check.ran, "cause": check.cause, "rejected": check.rejected,
                "failed": check.failed}
    common = dict(depends_on=("check:runtime",), observed=observed)
    if not check.ran or check.failed:
        cause = check.cause or next(iter(check.failed.values()))
        return Change("check:server_flags", "blocked", "flag_check_failed",
                      f"could not run sglang {sglang_version}'s argument parser in the runtime (as the storage "
                      f"owner): {cause} → fix the runtime (the flags were not judged)", **common)
    if check.rejected:
        first_stage, err = next(iter(check.rejected.items()))
        return Change("check:server_flags", "blocked", "flags_rejected",
                      f"sglang {sglang_version} rejects the {first_stage} server flags: {err} → fix server.settings "
                      f"or server.extra_args", **common)
    return Change("check:server_flags", "noop", "ok",
                  f"sglang {sglang_version} accepts the flags of {', '.join(stages) or 'no stage'}",
                  show=False, **common)
