"""FlashInfer JIT modules, primed two ways:

- `via: server` (FlashInfer): a warm-up server with the attention backend
  builds the modules the model's shapes need;
- `via: direct` (FlashInferDirect): each module listed in `modules` is built
  through FlashInfer's own `build_and_load`, one process per module, no
  server, no sglang.

Both judge warmth on the host: every module has its `.so`, `ninja -n` has no
work, and `build.ninja` names the directory it sits in (a moved cache
rebuilds in full). They also own the `flashinfer:incomplete` resource
(module builds a killed JIT left without their `.so`, and their free locks)
and the `check:flashinfer_toolchain` preflight.
"""
from __future__ import annotations

import json
import os
import time

from ..facts_host import tree_stats
from ..facts_runtime import RuntimeFacts
from ..plan_model import Change
from ..state_flags import flashinfer_cached_ops
from ..state_spec import S
from .spec import Stage, StageFailed


class FlashInfer(Stage):
    kind = "flashinfer"
    cache_dir = "profiles/flashinfer"
    caches = {"flashinfer": "profiles/flashinfer"}
    libraries = ("flashinfer",)
    # FlashInfer modules are keyed by dtypes and the attention backend.
    settings = ("kv_cache_dtype", "context_length", "max_prefill_tokens")
    signed_options = ("attention_backend", "via", "modules")
    options = {
        "attention_backend": S(kind="str", default=None,
                               doc="pass --attention-backend (e.g. flashinfer) to the warm-up server"),
        "via": S(kind="enum", choices=("server", "direct"), default="server",
                 doc="server: a warm-up server; direct: build `modules` with FlashInfer's per-module JIT"),
        "modules": S(kind="list", default=[], item=S(kind="map", fields={
            "kind": S(kind="enum", choices=("decode", "prefill"), required=True),
            "head_dim": S(kind="int", minimum=1, default=128),
            "dtype": S(kind="enum", choices=("bf16", "fp16"), default="bf16"),
            "kv_dtype": S(kind="enum", choices=("bf16", "fp16", "fp8_e4m3", "fp8_e5m2"), default=None),
            "backend": S(kind="enum", choices=("fa2", "fa3", "auto"), default="fa2"),
            "num_qo_heads": S(kind="int", minimum=1, default=32),
            "num_kv_heads": S(kind="int", minimum=1, default=8),
            "page_size": S(kind="int", minimum=1, default=16),
        })),
        "max_parallel": S(kind="int", minimum=1, default=4, doc="direct: modules built at once"),
        "jobs_per_module": S(kind="int", minimum=1, default=2, doc="direct: MAX_JOBS of each build"),
    }
    default_mode = "ensure"
    exit_code = 12
    starts_server = True
    own_depends = ("check:flashinfer_toolchain", "flashinfer:incomplete")
    resource_types = ("flashinfer",)
    # build.ninja holds absolute paths and ninja compares mtimes and command
    # hashes: a pulled cache is relocated (paths rewritten, .ninja_log hashes
    # recomputed, .ninja_deps re-encoded, mtimes restamped) before it is judged
    doc = "FlashInfer JIT modules (a warm-up server, or direct per-module builds)"

    @classmethod
    def select(cls, data: dict) -> type:
        return FlashInferDirect if data["caches"]["flashinfer"]["via"] == "direct" else FlashInfer

    def launch_extra(self) -> list:
        backend = self.opts.get("attention_backend")
        return ["--attention-backend", backend] if backend else []

    def launch_flags(self) -> list:
        return super().launch_flags() + self.launch_extra()

    def keeps(self, rel: str) -> bool:
        # the modules' shared objects: ninja rewrites its own logs and objects, the .so is what loads
        return rel.endswith(".so") and "/cached_ops/" in rel

    def bundle_keeps(self, rel: str) -> bool:
        # the whole build tree: without build.ninja, its logs, the objects and
        # the generated sources FlashInfer's JIT would run ninja and rebuild
        name = rel.rsplit("/", 1)[-1]
        return "/cached_ops/tmp/" not in rel and not (
            name in ("signature.json", "manifest.json") or name.endswith((".log", ".lock", ".tmp", ".new"))
            or name.startswith(".write_test"))

    def repair_targets(self, damaged: tuple) -> tuple:
        # a module's whole build dir: with a damaged .so left in place ninja sees no work
        return tuple(dict.fromkeys(rel.rsplit("/", 1)[0] for rel in damaged))

    def checks(self, runtime, kind: str) -> list:
        return [diff_flashinfer_toolchain(runtime, kind)] if runtime.status == "ok" else []

    # ------------------------------------------------------------ facts
    def cached_ops(self, ctx, runtime) -> tuple[str, str] | None:
        """(host path, runtime path) of FlashInfer's cached_ops for this
        runtime, or None when it cannot be located (no GPU, no FlashInfer)."""
        if runtime.status != "ok" or not runtime.gpus or not runtime.version("flashinfer"):
            return None
        version, cap = runtime.version("flashinfer"), runtime.gpus[0].compute_cap
        return (flashinfer_cached_ops(ctx.path("profiles"), version, cap),
                flashinfer_cached_ops(ctx.runtime_path("profiles"), version, cap))

    def modules(self, facts, ctx, runtime) -> tuple:
        ops = self.cached_ops(ctx, runtime)
        if ops is None:
            return ()
        ninja = runtime.ninja if ctx.runtime_kind == "local" else None
        return facts.flashinfer_modules(ops[0], ops[1], ninja, ctx.owner.uid, ctx.owner.gid,
                                        self.data["runtime"]["env"])

    def observe(self, facts, ctx, runtime) -> str:
        from ..facts_stages import flashinfer_cache_problem

        if self.mode == "skip" or self.cached_ops(ctx, runtime) is None:
            return ""
        return flashinfer_cache_problem(self.modules(facts, ctx, runtime), runtime.flashinfer_data_newest_mtime)

    def resources(self, facts, ctx, runtime) -> list:
        change = self.diff_resource("flashinfer:incomplete", facts, ctx, runtime)
        return [change] if change is not None else []

    def diff_resource(self, address: str, facts, ctx, runtime):
        ops = self.cached_ops(ctx, runtime)
        if address != "flashinfer:incomplete" or self.mode == "skip" or ops is None:
            return None
        return diff_flashinfer_incomplete(facts.flashinfer_modules(ops[0], ops[1], None),
                                          facts.flashinfer_build_locks(ops[0]), ops[0])

    def apply_resource(self, change) -> str:
        """Remove module builds without their .so and the free locks they left."""
        import shutil

        for path in change.observed["stale_locks"]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for name in change.observed["broken"]:
            path = os.path.join(change.observed["cached_ops"], name)
            if os.path.lexists(path):
                shutil.rmtree(path)  # an error (e.g. another owner's files) fails the change
        return (f"removed {len(change.observed['broken'])} incomplete module build(s), "
                f"{len(change.observed['stale_locks'])} stale lock(s)")

    def problem_now(self, run) -> str:
        """The cache's warmth as the host sees it right now ("" = warm)."""
        return self.observe(run.facts(), run.ctx, run.rt)

    # ------------------------------------------------------------ bundles
    def anchors(self, run) -> dict:
        # the package's data dir is <site>/flashinfer/data: its site dir covers FlashInfer's sources and
        # the headers of the packages beside it (tvm_ffi) that build.ninja names
        data = run.rt.flashinfer_data_dir.rstrip("/")
        site = os.path.dirname(os.path.dirname(data)) if data.endswith("/flashinfer/data") else data
        return {"profiles": run.ctx.runtime_path("profiles"), "site": site}

    def relocate(self, run, anchors: dict, out) -> None:
        from ..exec_relocate import RelocateError, relocate_build_tree

        mine = self.anchors(run)
        moves = [(anchors[k], mine[k]) for k in sorted(mine)
                 if isinstance(anchors.get(k), str) and anchors[k].startswith("/") and mine[k] and anchors[k] != mine[k]]
        ops = self.cached_ops(run.ctx, run.rt)
        if not moves or ops is None:
            return
        try:
            with run.owner():
                summary = relocate_build_tree(ops[0], moves)
        except (RelocateError, OSError) as exc:
            raise StageFailed("relocate_failed", f"relocating the pulled FlashInfer cache: {exc}") from None
        out.artifacts["relocated"] = {**summary, "moves": [list(m) for m in moves]}

    def pulled_problem(self, run) -> str:
        problem = self.problem_now(run)
        if problem or run.ctx.runtime_kind != "local" or not run.rt.ninja:
            return problem
        # a pulled tree must be proven by ninja itself: every module dry-runs clean
        unproven = [m.name for m in self.modules(run.facts(), run.ctx, run.rt) if m.ninja != "clean"]
        return f"ninja cannot prove {len(unproven)} module(s) clean: {unproven[0]}" if unproven else ""

    # ------------------------------------------------------------ apply
    def prime(self, run, out, beat) -> None:
        before = tree_stats(run.path(self.cache_dir))
        out.artifacts["workspace_dir"] = run.artifact(self.cache_dir)
        server = run.warmup(self, out, beat, log_files=(run.path(self.log_rel(run.slug, "warmup.log")),))
        after = tree_stats(run.path(self.cache_dir))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}
        out.artifacts["jit_modules_built"] = server.scan.flashinfer_builds
        problem = self.problem_now(run)
        if problem:
            raise StageFailed("verify_failed", f"after the warm-up the FlashInfer cache is not warm: {problem}")

    def verify(self, run, out, beat) -> dict:
        from ..facts_stages import flashinfer_cache_problem

        ops = self.cached_ops(run.ctx, run.rt)
        modules = self.modules(run.facts(), run.ctx, run.rt)
        problem = flashinfer_cache_problem(modules, run.rt.flashinfer_data_newest_mtime)
        evidence = {"method": "host-side: .so present, `ninja -n` has no work, build.ninja names its dir",
                    "cached_ops": ops[0] if ops else "", "modules": [m._asdict() for m in modules], "ok": not problem}
        if problem:
            raise StageFailed("verify_failed", problem, evidence=evidence)
        if any(m.ninja == "unknown" for m in modules):
            evidence["note"] = "ninja not available in the runtime: build files not dry-run"
        return evidence


class FlashInferDirect(FlashInfer):
    """`via: direct`: FlashInfer's own per-module JIT, no server."""

    starts_server = False
    uses_sglang = False

    def option_problem(self, runtime) -> str:
        if not self.opts["modules"]:
            return "caches.flashinfer.via is direct but caches.flashinfer.modules lists no module"
        if runtime.status == "ok" and not runtime.version("flashinfer"):
            return f"flashinfer is not installed in runtime python {self.data['runtime']['python']!r}"
        return ""

    def prime(self, run, out, beat) -> None:
        """Each module through FlashInfer's own build_and_load, one process per
        module, `max_parallel` at a time (never build_jit_specs, whose output
        the runtime rebuilds)."""
        from ..runtime_flashinfer import BUILD_SCRIPT, module_key

        opts = self.opts
        timeout = self.timeout()
        env = run.env(self, {"MAX_JOBS": str(opts["jobs_per_module"])})
        out.env = run.routing()
        out.artifacts["workspace_dir"] = run.artifact(self.cache_dir)
        before = tree_stats(run.path(self.cache_dir))
        pending = list(enumerate(opts["modules"]))
        running: dict = {}
        results: list = [None] * len(pending)
        deadline = time.monotonic() + timeout
        log = run.path(self.log_rel(run.slug, "build.log"))
        try:
            while pending or running:
                while pending and len(running) < opts["max_parallel"]:
                    index, spec = pending.pop(0)
                    lines: list = []
                    sink = run.sink(log)

                    def on_line(line, sink=sink, lines=lines):
                        sink(line)
                        if line.startswith("FLASHINFER_MODULE "):
                            lines.append(line)

                    argv = [run.runtime.python, "-B", "-c", BUILD_SCRIPT, json.dumps(spec, sort_keys=True)]
                    try:
                        proc = run.runtime.spawn(argv, env, on_line)
                    except OSError as exc:
                        sink.close()
                        raise StageFailed("flashinfer_build_failed",
                                          f"cannot start {argv[0]}: {exc.strerror or exc}") from None
                    running[index] = (proc, sink, lines, time.monotonic(), spec)
                    beat.set(f"building {index + 1}/{len(results)}: {module_key(spec)}")
                for index, (proc, sink, lines, started, spec) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    proc.drain() if hasattr(proc, "drain") else None
                    sink.close()
                    del running[index]
                    info = json.loads(lines[-1].split(" ", 1)[1]) if lines else {}
                    results[index] = {"spec": spec, "exit_code": rc, "wall_s": round(time.monotonic() - started, 3),
                                      **info}
                    if rc != 0:
                        raise StageFailed("flashinfer_build_failed",
                                          f"building {module_key(spec)} exited {rc}", modules=results)
                if time.monotonic() > deadline:
                    raise StageFailed("command_timeout", f"FlashInfer builds still running after {timeout:g}s",
                                      modules=results)
                time.sleep(0.1)
        finally:
            for proc, sink, _, _, _ in running.values():
                run.runtime.teardown(proc, run.teardown_s)
                sink.close()
            out.artifacts["modules"] = results
        after = tree_stats(run.path(self.cache_dir))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}
        problem = self.problem_now(run)
        if problem:
            raise StageFailed("verify_failed", f"after the builds the FlashInfer cache is not warm: {problem}")


# ------------------------------------------------------------------ pure diffs

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
