"""Fused-MoE Triton configs: run SGLang's tuner per batch size, merge its
batch-size-keyed JSON into `configs/triton_<ver>/`, then prove a server
started with SGLANG_MOE_CONFIG_DIR logs one of our files."""
from __future__ import annotations

import json
import os
import shutil

from ..state_flags import triton_config_dirname
from ..state_spec import S
from .spec import Stage, StageFailed

PACKAGED_MOE_CONFIGS = "srt/layers/moe/moe_runner/triton_utils/configs"


class MoeTune(Stage):
    kind = "moe_tune"
    cache_dir = "profiles/moe_configs"
    caches = {"moe_configs": "profiles/moe_configs"}
    signed_options = ("script", "batch_sizes", "dtype", "tuner_args")
    options = {
        "script": S(kind="str", default=None, doc="the fused-MoE Triton tuner, as the runtime sees it"),
        "batch_sizes": S(kind="list", item=S(kind="int", minimum=1), default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                         check=lambda v: None if v else "must list at least one batch size"),
        "dtype": S(kind="str", default="fp8_w8a8", doc="tuner --dtype"),
        "tuner_args": S(kind="list", item=S(kind="str"), default=[], doc="more tuner argv items"),
    }
    default_mode = "skip"
    exit_code = 11
    own_depends = ("check:gpu_count", "check:model")
    # set, SGLANG_MOE_CONFIG_DIR hides SGLang's packaged configs: route it only once tuned
    conditional_routing = {"SGLANG_MOE_CONFIG_DIR": "moe_configs"}
    doc = "fused-MoE Triton kernel configs (SGLang's tuner)"

    def option_problem(self, runtime) -> str:
        problem = super().option_problem(runtime)
        if problem:
            return problem
        if not self.opts["script"]:
            return ("caches.moe_tune.script is not set → point it at the fused-MoE tuner "
                    "(benchmark/kernels/fused_moe_triton/tuning_fused_moe_triton.py of your SGLang tag)")
        return ""

    def tuner_argv(self, python: str, batch: int) -> list:
        return [python, self.opts["script"], "--model", self.data["model"]["path"], "--tp-size", str(self.data["tp"]),
                "--dtype", self.opts["dtype"], "--batch-size", str(batch), "--tune", *self.opts["tuner_args"]]

    def prime(self, run, out, beat) -> None:
        import hashlib  # noqa: F401 - imported before privileges drop (merge_config runs as the owner)

        from .. import journal  # noqa: F401 - likewise

        triton = run.rt.version("triton")
        if not triton:
            raise StageFailed("tuner_execution_error", "triton is not installed in the runtime")
        configs_rel = f"{self.cache_dir}/configs/{triton_config_dirname(triton)}"
        target = run.path(configs_rel)
        work_rel = f"{self.cache_dir}/.work-{run.run_id}"
        work = run.path(work_rel)
        with run.owner():
            self._seed_packaged_configs(run)
            os.makedirs(target, exist_ok=True)
            os.makedirs(work, exist_ok=True)
        written: dict = {}
        runs = []
        try:
            for batch in self.opts["batch_sizes"]:
                beat.set(f"tune batch_size={batch}")
                rc, produced = self._run_tuner(run, self.tuner_argv(run.runtime.python, batch), work,
                                               run.rpath(work_rel))
                runs.append({"batch_size": batch, "exit_code": rc, "files": sorted(produced)})
                if rc != 0:
                    raise StageFailed("tuner_execution_error", f"tuner exited {rc} for batch size {batch}",
                                      runs=runs)
                if not produced:
                    raise StageFailed("tuner_execution_error", f"tuner wrote no config for batch size {batch}",
                                      runs=runs)
                with run.owner():
                    for name in produced:
                        written[name] = merge_config(os.path.join(work, name), os.path.join(target, name))
                        os.unlink(os.path.join(work, name))  # the next batch size writes the same name
        finally:
            with run.owner():
                shutil.rmtree(work, ignore_errors=True)
        out.artifacts["tuner_runs"] = runs
        out.artifacts["tuner"] = {"script": self.opts["script"], "script_sha256": _script_digest(run, self.opts["script"]),
                                  "sglang_version": run.rt.version("sglang"), "triton_version": triton,
                                  "inputs": {"model": self.data["model"]["path"], "tp": self.data["tp"],
                                             "dtype": self.opts["dtype"], "batch_sizes": self.opts["batch_sizes"],
                                             "tuner_args": self.opts["tuner_args"]}}
        out.artifacts["config_files"] = {name: {**run.artifact(f"{configs_rel}/{name}"), "config_hash": digest}
                                         for name, digest in sorted(written.items())}
        out.artifacts["triton_version"] = triton
        # verify consumption: a server started with SGLANG_MOE_CONFIG_DIR must log our file
        run.ready.add(self.name)
        verify_rel = self.log_rel(run.slug, "verify.log")
        server = run.warmup(self, out, beat, log_files=(run.path(verify_rel),))
        ours = [p for p in server.scan.moe_configs if p.startswith(run.rpath(self.cache_dir))]
        out.artifacts["verified_in_log"] = bool(ours)
        out.artifacts["verify_log"] = run.artifact(verify_rel)
        if not ours:
            run.ready.discard(self.name)
            seen = server.scan.moe_configs[-1] if server.scan.moe_configs else (
                "the default MoE config" if server.scan.moe_default else "no MoE config line")
            raise StageFailed("verify_log_missing",
                              f"the server did not log 'Using MoE kernel config from' a tuned file (saw {seen})")

    def _seed_packaged_configs(self, run) -> None:
        """SGLANG_MOE_CONFIG_DIR hides SGLang's packaged configs: copy them in once."""
        dest = run.path(f"{self.cache_dir}/configs")
        src = os.path.join(run.rt.sglang_dir, PACKAGED_MOE_CONFIGS) if run.rt.sglang_dir else ""
        if src and os.path.isdir(src) and not os.path.isdir(dest):
            shutil.copytree(src, dest, copy_function=shutil.copyfile)
        os.makedirs(dest, exist_ok=True)

    def _run_tuner(self, run, argv: list, cwd: str, runtime_cwd: str) -> tuple[int, list]:
        """Run the tuner in `runtime_cwd` (the runtime's view of host dir `cwd`)."""
        before = set(os.listdir(cwd))
        timeout = self.timeout()
        sink = run.sink()
        try:
            proc = run.runtime.spawn(argv, run.env(self), sink, cwd=runtime_cwd)
        except OSError as exc:
            raise StageFailed("tuner_execution_error", f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        try:
            rc = proc.wait(timeout)
        finally:  # also when interrupted
            run.runtime.teardown(proc, run.teardown_s)
        if rc is None:
            raise StageFailed("tuner_execution_error", f"tuner still running after {timeout:g}s")
        produced = [n for n in os.listdir(cwd) if n.endswith(".json") and n not in before]
        return rc, produced


def _script_digest(run, script: str) -> str | None:
    """sha256 of the tuner script as the host sees it (the tuner's exact
    version: SGLang's benchmark scripts carry no version of their own)."""
    import hashlib

    path = script if run.ctx.runtime_kind == "local" else ""
    try:
        with open(path, "rb") as fh:
            return "sha256:" + hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def merge_config(src: str, dest: str) -> str:
    """Merge a tuner's batch-size-keyed JSON into `dest` (atomically); its sha256."""
    import hashlib

    from ..journal import atomic_write_json

    with open(src, encoding="utf-8") as fh:
        new = json.load(fh)
    merged = {}
    if os.path.exists(dest):
        with open(dest, encoding="utf-8") as fh:
            merged = json.load(fh)
    merged.update(new)
    ordered = dict(sorted(merged.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0)))
    atomic_write_json(dest, ordered)
    with open(dest, "rb") as fh:
        return "sha256:" + hashlib.sha256(fh.read()).hexdigest()
