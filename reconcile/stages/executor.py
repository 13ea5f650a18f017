"""The executor of `stage:*` changes: runs each through the generic StageRun,
and journals them: a stage JSON for every stage (noop and skipped ones too),
written before the aggregate `prep_result.json`, and the RESULT_STATUS line."""
from __future__ import annotations

import os
import time

from ..exec_privs import as_owner
from ..facts_runtime import RuntimeFacts
from ..journal import utc_now_iso
from ..redaction import redact
from ..plan_model import CHANGED, FAILED, UNCHANGED, Result
from ..state_flags import cache_env
from . import catalog
from .plan import runtime_facts
from .runner import StageOutcome, StageRun


class StagesExecutor:
    def __init__(self, plan, desired, ctx, log, run_id: str, progress=None, facts=None, verify: bool = True):
        self.plan, self.desired, self.ctx, self.log, self.run_id = plan, desired, ctx, log, run_id
        self.verify = verify
        self.progress = progress
        if facts is None:
            from ..facts_host import HostFacts

            facts = HostFacts()
        self.facts = facts
        self.stages = {s.name: s for s in catalog.stages(desired.data)}
        self.outcomes: dict = {}
        self.runner: StageRun | None = None
        self.started_at = utc_now_iso()
        self.t0 = time.monotonic()

    def _runner(self) -> StageRun:
        if self.runner is None:
            data = self.desired.data
            # the plan's probe when it had one; with a container that has just
            # started, the first (and only) probe happens now
            rt = runtime_facts(self.desired, self.facts, self.ctx)
            environ = self.facts.environ
            if self.ctx.runtime_kind == "docker":
                from ..exec_docker import DockerRuntime

                runtime = DockerRuntime(data["runtime"]["container"]["name"], data["runtime"]["python"],
                                        data["runtime"]["env"], self.ctx.owner.uid, self.ctx.owner.gid, environ)
            else:
                from ..exec_runtime import LocalRuntime

                runtime = LocalRuntime(data["runtime"]["python"], data["runtime"]["env"], self.ctx.owner.uid,
                                       self.ctx.owner.gid, self.facts.owner_home(self.ctx.owner.uid), environ)
            self.runner = StageRun(self.desired, self.ctx, runtime, rt, self.log, self.run_id, self.progress,
                                   self.facts)
            self.runner.ready = {name for name in self.stages if self._valid_in_plan(name)}
            self.runner.flags_checked = self.plan.find("check:server_flags") is not None
            self.runner.verify_artifacts = self.verify
        return self.runner

    def _valid_in_plan(self, name: str) -> bool:
        change = self.plan.find(f"stage:{name}")
        return change is not None and change.action == "noop" and change.reason == "valid_signature"

    def execute(self, change) -> Result:
        runner = self._runner()
        stage = self.stages.get(change.name)
        if stage is None:
            outcome = StageOutcome(stage=change.name, status="error", ran=False, error_type="invalid_options",
                                   errors=[{"error_type": "invalid_options",
                                            "message": f"no stage {change.name} in the desired state"}])
        elif change.action == "blocked":  # never run a stage the plan blocked; its reason is the error
            outcome = StageOutcome(stage=change.name, status="error", ran=False, error_type=change.reason,
                                   exit_code=stage.exit_code,
                                   errors=[{"error_type": change.reason, "message": change.message}])
        elif runner.rt.status != "ok":
            outcome = StageOutcome(stage=change.name, status="error", ran=False, error_type="runtime_unavailable",
                                   exit_code=stage.exit_code,
                                   errors=[{"error_type": "runtime_unavailable", "message": runner.rt.problem}])
        else:
            outcome = runner.run(stage)
        self.outcomes[change.name] = outcome
        self._write_stage(change.name, outcome)
        if runner.interrupted is not None:  # journaled: now let apply stop
            interrupted, runner.interrupted = runner.interrupted, None
            raise interrupted
        if outcome.status == "ok":
            return Result(change.address, change.action, CHANGED, f"primed in {outcome.duration_s:.1f}s")
        if outcome.status == "noop":
            return Result(change.address, change.action, UNCHANGED, "already primed by another run")
        message = outcome.errors[-1]["message"] if outcome.errors else "failed"
        return Result(change.address, change.action, FAILED, message, outcome.error_type or "")

    def fail(self, change, error_type: str, message: str) -> Result:
        """The stage could not start for a reason found before it (a busy
        port, a full disk, a directory it cannot write): an error of that
        type, with its exit code."""
        stage = self.stages.get(change.name)
        outcome = StageOutcome(stage=change.name, status="error", ran=False, error_type=error_type,
                               exit_code=stage.exit_code if stage else 14,
                               errors=[{"error_type": error_type, "message": message}])
        self.outcomes[change.name] = outcome
        self._write_stage(change.name, outcome)
        return Result(change.address, change.action, FAILED, message, error_type)

    def skip(self, change, why: str, error_type: str = "dependency_failed") -> None:
        self.outcomes[change.name] = StageOutcome(stage=change.name, status="skipped", ran=False, reason=why,
                                                  errors=[{"error_type": error_type, "message": why}])
        self._write_stage(change.name, self.outcomes[change.name])

    def unfinished(self, name: str) -> StageOutcome:
        """The outcome of a stage apply did not execute. Only a stage the plan
        found valid is `noop`, only a skipped one `skipped` without error; one
        that needed work and did not get it is never reported as fine."""
        change = self.plan.find(f"stage:{name}")
        if change is None or change.reason == "skipped":
            return StageOutcome(stage=name, status="skipped", ran=False, reason="skipped")
        if change.action == "noop":
            return StageOutcome(stage=name, status="noop", ran=False, reason=change.reason,
                                signature=change.before or {})
        why = f"not run: it needed '{change.text()}' but this apply did not execute it (--only, or interrupted)"
        return StageOutcome(stage=name, status="skipped", ran=False, reason=why,
                            errors=[{"error_type": "not_run", "message": why}])

    def _run_dir_usable(self) -> bool:
        """Never write the run's files through a link planted in the tree."""
        from ..facts_host import linked_component

        rel = os.path.relpath(self.run_dir, self.ctx.root)
        link = linked_component(self.ctx.root, rel + "/stages")
        if link:
            self.log.event("RUN_FILES_REFUSED", reason=f"{link} is a symlink")
        return not link

    def _write_stage(self, name: str, outcome: StageOutcome) -> None:
        from ..journal import write_run_file

        if not self._run_dir_usable():
            return
        try:
            with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
                write_run_file(self.run_dir, f"stages/{name.replace('/', '.')}.json", outcome.to_json())
        except OSError as exc:  # e.g. a full disk: the outcome stays in memory for prep_result and the report
            self.log.event("STAGE_FILE_FAILED", stage=name, error=f"{exc.strerror or exc}")

    @property
    def run_dir(self) -> str:
        return self.ctx.path(f"telemetry/container_runs/{self.run_id}")

    def finish(self, write: bool = True) -> tuple[str, str, int]:
        """Stage files for the stages that did not run, then the aggregate.
        Returns (prep_result path, RESULT_STATUS line, exit code of the first
        failing stage or 0). `write=False`: the run's directory cannot be
        used; the verdict is still computed (and printed), no file written."""
        from ..journal import write_run_file

        names = list(self.stages)
        for name in names:
            if name in self.outcomes:
                continue
            self.outcomes[name] = self.unfinished(name)
            if write:
                self._write_stage(name, self.outcomes[name])
        doc = self.prep_result()
        path = ""
        try:
            if write and self._run_dir_usable():
                with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
                    path = write_run_file(self.run_dir, "prep_result.json", doc)
        except OSError as exc:  # the stage files stay the source of truth
            self.log.event("AGGREGATE_FAILED", error=str(exc))
        line = "RESULT_STATUS " + doc["status"] + " " + " ".join(f"{s}:{self.outcomes[s].status}" for s in names)
        code = next((self.outcomes[s].status_code for s in names if self.outcomes[s].status == "error"), 0)
        return path, line, code

    def prep_result(self) -> dict:
        names = list(self.stages)
        data = self.desired.data
        rt = self.runner.rt if self.runner else RuntimeFacts(status="unavailable")
        sig = rt.signature()
        errors = [{"stage": s, **e} for s in names for e in self.outcomes[s].errors]
        warnings = [f"{s}: {w}" for s in names for w in self.outcomes[s].warnings]
        failing = [s for s in names if self.outcomes[s].errors]  # failed, or skipped by a failed dependency
        if not failing:
            status = "ok"
        elif any(self.outcomes[s].status in ("ok", "noop") for s in names):
            status = "partial"
        else:
            status = "error"
        probes = self.runner.telemetry if self.runner else []
        telemetry = {"ok": bool(probes) and all(p.get("ok") for p in probes),
                     "sample_count": sum(p.get("sample_count", 0) for p in probes),
                     "prometheus_query": probes[-1]["prometheus_query"] if probes else "",
                     "probes": len(probes)}
        reason = next((p.get("error") for p in probes if not p.get("ok")), "") if probes else (
            "" if not data["telemetry"]["probe"] else "no warm-up server ran in this apply")
        if reason:
            telemetry["reason"] = reason
        finished = utc_now_iso()
        routing = self.runner.routing() if self.runner else cache_env(self.ctx.runtime_path("profiles"))
        return {
            "schema_version": "1",
            "status": status,
            "run": {
                "run_id": self.run_id, "model_slug": self.desired.model_slug, "tp": data["tp"],
                "device_name": sig["device_name"], "compute_capability": sig["compute_capability"],
                "cuda": sig["cuda"], "driver_version": sig["driver_version"],
                "torch_version": sig["torch_version"], "triton_version": sig["triton_version"],
                "sglang_version": sig["sglang_version"], "flashinfer_version": rt.version("flashinfer"),
                "started_at": self.started_at, "finished_at": finished,
                "duration_s": round(time.monotonic() - self.t0, 3),
                "settings": {"source": "state", "state_file": self.desired.state_file,
                             **redact(data["server"]["settings"]), "mem_fraction": data["server"]["settings"].get(
                                 "mem_fraction_static"),
                             "warmup_port": data["server"]["port"], "write_mode": "atomic", "env": routing},
            },
            "stages": {s: self.outcomes[s].to_json() for s in names},
            "telemetry_probe": telemetry,
            "errors": errors,
            "warnings": warnings,
        }
