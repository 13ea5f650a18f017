"""Cache stages: prime each cache in the runtime, prove it, journal it.

Per stage: take `profiles/.locks/<stage>.lock` (wait heartbeats, then
`lock_timeout`), re-check the signature (another run may have primed it),
write the in-progress marker, preflight (writable cache dir, free disk, the
strict port), run the stage, optionally verify, then write the signature and
remove the marker only on success. The stage JSON is written before the
aggregate; every line of every process goes to the session log.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field

from .diff_stages import (cache_dir, diff_stage, file_name, flashinfer_direct, is_custom, is_server_stage,
                          stage_names, stage_options, stage_signature)
from .diff_storage import lock_liveness
from .errors import STAGE_EXIT_CODES
from .exec_privs import as_owner
from .exec_runtime import Runtime
from .exec_server import PROMPT_TOKENS, ServerError, WarmupServer, prometheus_samples, settings_mismatch
from .facts_host import HostFacts, tree_stats
from .facts_runtime import RuntimeFacts
from .facts_stages import flashinfer_cache_problem, flashinfer_modules, signature_fact
from .journal import SessionLog, atomic_write_json, create_exclusive, utc_now_iso
from .plan import Context, flashinfer_problem, signature_path, stage_timeout
from .state_flags import (KV_LOG_DTYPES, cache_env, flashinfer_cached_ops, server_argv, server_module,
                          triton_config_dirname)
from .state_layout import lock_path, marker_path
from .state_load import Desired

PACKAGED_MOE_CONFIGS = "srt/layers/moe/moe_runner/triton_utils/configs"


class StageFailed(Exception):
    def __init__(self, error_type: str, message: str, **details):
        super().__init__(message)
        self.error_type, self.details = error_type, details


@dataclass
class StageOutcome:
    stage: str
    status: str  # ok | error | noop | skipped
    ran: bool = False
    reason: str = ""
    duration_s: float = 0.0
    error_type: str | None = None
    artifacts: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    signature: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    telemetry: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    @property
    def status_code(self) -> int:
        return STAGE_EXIT_CODES.get(self.stage, STAGE_EXIT_CODES["custom"]) if self.status == "error" else 0

    def to_json(self) -> dict:
        doc = {"ran": self.ran, "status": self.status, "status_code": self.status_code,
               "duration_s": round(self.duration_s, 3), "artifacts": self.artifacts, "error_type": self.error_type,
               "warnings": self.warnings, "errors": self.errors, "reason": self.reason}
        if self.signature:
            doc["signature"] = self.signature
        if self.evidence:
            doc["evidence"] = self.evidence
        if self.telemetry:
            doc["telemetry_probe"] = self.telemetry
        if self.env:
            doc["env"] = self.env
        return doc


class Heartbeat:
    """Emits a progress line at least every `every_s` while a stage runs."""

    def __init__(self, log: SessionLog, stage: str, every_s: float, say):
        self.log, self.stage, self.every_s, self.say = log, stage, every_s, say
        self.phase, self.started = "start", time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)

    def set(self, phase: str) -> None:
        self.phase = phase
        self.say(self.stage, phase, time.monotonic() - self.started)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            elapsed = int(time.monotonic() - self.started)
            self.log.optimize(self.stage, "progress", f"{self.phase}, {elapsed}s elapsed",
                              elapsed_s=elapsed, hint=self.phase)
            self.say(self.stage, self.phase, time.monotonic() - self.started)


class StageRunner:
    """Runs the stage changes of one apply."""

    def __init__(self, desired: Desired, ctx: Context, runtime: Runtime, rt_facts: RuntimeFacts,
                 log: SessionLog, run_id: str, say=None):
        self.desired, self.ctx, self.runtime, self.rt = desired, ctx, runtime, rt_facts
        self.data = desired.data
        self.log, self.run_id = log, run_id
        self.say = say or (lambda stage, phase, elapsed: None)
        self.slug = desired.model_slug
        self.moe_ready = False  # set once SGLANG_MOE_CONFIG_DIR holds tuned configs
        self.runtime_environ = getattr(runtime, "environ", None)
        self.flags_checked = True  # the plan's check:server_flags ran; StagesExecutor clears it otherwise
        self.telemetry: list = []

    # ------------------------------------------------------------ helpers
    def owner(self):
        return as_owner(self.ctx.owner.uid, self.ctx.owner.gid)

    def rpath(self, rel: str) -> str:
        return self.ctx.runtime_path(rel)

    def env(self, stage: str, extra: dict | None = None) -> dict:
        """base environment + cache routing + the stage's own `env` + `extra`."""
        env = self.runtime.base_env()
        env.update(cache_env(self.rpath("profiles"), self.moe_ready))
        env.update(stage_options(self.data, stage).get("env", {}))
        env.update(extra or {})
        return env

    def routing(self) -> dict:
        return cache_env(self.rpath("profiles"), self.moe_ready)

    # ------------------------------------------------------------ entry
    def run(self, stage: str) -> StageOutcome:
        started = time.monotonic()
        out = StageOutcome(stage=stage, status="error", ran=True)
        want = stage_signature(stage, self.data, self.slug, self.rt)
        out.signature = want
        self.log.optimize(stage, "start", f"starting {{model={self.data['model']['path']}, tp={self.data['tp']}}}",
                          settings={"model": self.data["model"]["path"], "tp": self.data["tp"],
                                    **self.data["server"]["settings"]})
        lock_held = False
        try:
            with Heartbeat(self.log, stage, self.data["heartbeat_s"], self.say) as beat:
                if is_server_stage(stage, self.data) and not self.flags_checked:
                    beat.set("check_flags")
                    self._validate_flags(stage)
                beat.set("wait_lock")
                self._acquire_lock(stage, beat)
                lock_held = True
                fresh = self._recheck(stage, want)
                if fresh.action == "noop":
                    out.status, out.ran, out.reason = "noop", False, fresh.reason
                    return out
                out.reason = fresh.message
                self._write_marker(stage)
                beat.set("preflight")
                self._preflight(stage)
                if is_custom(stage):
                    self._stage_custom(stage, out, beat)
                elif stage == "flashinfer" and flashinfer_direct(self.data):
                    self._stage_flashinfer_direct(out, beat)
                else:
                    getattr(self, f"_stage_{stage}")(out, beat)
                if stage_options(self.data, stage).get("verify"):
                    beat.set("verify")
                    out.evidence = self._verify(stage, beat)
                self._write_signature(stage, want)
                self._remove_marker(stage)
                out.status = "ok"
        except StageFailed as exc:
            out.error_type = exc.error_type
            out.errors.append({"error_type": exc.error_type, "message": str(exc), **exc.details})
        except ServerError as exc:
            out.error_type = exc.error_type
            out.errors.append({"error_type": exc.error_type, "message": str(exc)})
        finally:
            if lock_held:
                self._release_lock(stage)
            out.duration_s = time.monotonic() - started
            if out.status == "ok" and stage == "moe_tune":
                self.moe_ready = True
            self.log.optimize(stage, "end", f"{out.status} in {out.duration_s:.1f}s"
                              + (f" ({out.error_type}: {out.errors[-1]['message']})" if out.errors else ""),
                              status=out.status, duration_s=round(out.duration_s, 3),
                              **({"error_type": out.error_type} if out.error_type else {}))
        return out

    def _validate_flags(self, stage: str) -> None:
        """The plan could not ask the runtime's parser (the container was not up):
        ask it now, before any GPU time."""
        from .facts_stages import validate_server_flags

        argv = server_argv(stage, self.data, self.data["model"]["path"], stage_timeout(self.data, stage))
        if self.ctx.runtime_kind == "docker":
            from .exec_docker import docker_prober

            prober = docker_prober(self.runtime.container, self.ctx.owner.uid, self.ctx.owner.gid,
                                   self.runtime.base_env(), self.runtime_environ)
        else:
            from .facts_runtime import local_prober

            prober = local_prober(self.runtime.base_env(), self.ctx.owner.uid, self.ctx.owner.gid)
        error = validate_server_flags(self.runtime.python, prober, {stage: argv}).get(stage, "")
        if error:
            raise StageFailed("flags_rejected", f"sglang {self.rt.version('sglang')} rejects the {stage} server "
                              f"flags: {error}")

    # ------------------------------------------------------------ lock, marker, preflight
    def _acquire_lock(self, stage: str, beat: Heartbeat) -> None:
        path = self.ctx.path(lock_path(file_name(stage)))
        info = json.dumps({"owner_pid": os.getpid(), "started_at": utc_now_iso(), "host": self.ctx.hostname,
                           "command": f"sglprep apply (stage {stage})"}) + "\n"
        timeout = self.data["timeouts"]["lock_s"]
        start = time.monotonic()
        last_beat = 0.0
        while True:
            with self.owner():
                if create_exclusive(path, info):
                    return
            lock = HostFacts().lock_file(stage, path)
            if lock.kind == "ok":
                state, why = lock_liveness(lock, self.ctx.hostname)
                if state == "stale":
                    self.log.optimize(stage, "progress", f"reclaiming stale lock ({why})", hint="stale_lock")
                    with self.owner():
                        again = HostFacts().lock_file(stage, path)
                        if again.kind == "ok" and again.owner_pid == lock.owner_pid:
                            _unlink(path)
                    continue
            elif lock.kind == "missing":
                continue
            else:
                why = f"unreadable lock ({lock.error})"
            held = time.monotonic() - start
            if held >= timeout:
                raise StageFailed("lock_timeout", f"{path}: {why}; waited {timeout:g}s (timeouts.lock_s)",
                                  owner_pid=lock.owner_pid, started_at=lock.started_at)
            if held - last_beat >= min(self.data["heartbeat_s"], 30):
                last_beat = held
                self.log.optimize(stage, "wait_lock", f"waiting for the lock, {why}", slug=self.slug,
                                  held_for_s=round(held, 1), owner_pid=lock.owner_pid)
            time.sleep(0.2)

    def _release_lock(self, stage: str) -> None:
        path = self.ctx.path(lock_path(file_name(stage)))
        lock = HostFacts().lock_file(stage, path)
        if lock.kind == "ok" and lock.owner_pid == os.getpid():
            with self.owner():
                _unlink(path)

    def _recheck(self, stage: str, want: dict):
        facts = HostFacts()
        marker = facts.lock_file(file_name(stage), self.ctx.path(marker_path(file_name(stage))))
        sig = signature_fact(self.ctx.path(signature_path(stage, self.slug)))
        mode = self.desired.stage_mode(stage)
        problem = self._flashinfer_problem() if stage == "flashinfer" else ""
        return diff_stage(stage, mode, want, self.rt, sig, marker if marker.kind != "missing" else None,
                          self.ctx.hostname, self.data["server"]["port"], problem)

    def _write_marker(self, stage: str) -> None:
        with self.owner():
            atomic_write_json(self.ctx.path(marker_path(file_name(stage))),
                              {"owner_pid": os.getpid(), "started_at": utc_now_iso(), "run_id": self.run_id})

    def _remove_marker(self, stage: str) -> None:
        with self.owner():
            _unlink(self.ctx.path(marker_path(file_name(stage))))

    def _write_signature(self, stage: str, want: dict) -> None:
        path = self.ctx.path(signature_path(stage, self.slug))
        with self.owner():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_json(path, {"schema_version": "1", "stage": stage, "signature": want,
                                     "written_at": utc_now_iso(), "run_id": self.run_id})

    def _preflight(self, stage: str) -> None:
        cache_dir_path = self.ctx.path(cache_dir(stage))
        probe = os.path.join(cache_dir_path, f".write_test.{os.getpid()}")
        try:
            with self.owner():
                os.makedirs(cache_dir_path, exist_ok=True)  # custom stages own profiles/custom/<name>
                with open(probe, "w"):
                    pass
                os.unlink(probe)
        except OSError as exc:
            raise StageFailed("permissions_unexpected",
                              f"{cache_dir_path} is not writable by {self.ctx.owner.spec}: {exc.strerror} → fix its "
                              f"ownership on the host (sglprep never chowns)") from None
        need = int(self.data["storage"]["min_free_gib"] * (1 << 30))
        st = os.statvfs(cache_dir_path)
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise StageFailed("insufficient_disk", f"{free / (1 << 30):.2f} GiB free under {cache_dir_path}, "
                              f"need {need / (1 << 30):g} GiB", required_bytes=need, free_bytes=free)
        if is_server_stage(stage, self.data):
            port = HostFacts().port(self.data["server"]["port"])
            if port.state == "busy":
                holder = f"pid {port.pid} ({' '.join(port.cmdline)[:100]})" if port.pid else "an unknown process"
                raise StageFailed("port_busy", f"port {port.port} is busy, held by {holder}; no fallback ports",
                                  pid=port.pid, cmdline=list(port.cmdline))

    # ------------------------------------------------------------ processes
    def _sink(self, *files: str):
        """A line sink appending to the session log and to `files` (as the owner)."""
        handles = []
        with self.owner():
            for path in files:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                handles.append(open(path, "a", encoding="utf-8", buffering=1))
        lock = threading.Lock()

        def sink(line: str) -> None:
            self.log.write(line)
            with lock:
                for fh in handles:
                    fh.write(line + "\n")

        sink.close = lambda: [fh.close() for fh in handles]
        return sink

    def _server_argv(self, stage: str, module: str | None = None) -> list:
        timeout = stage_timeout(self.data, stage)
        return [self.runtime.python, "-m", module or server_module(stage),
                *server_argv(stage, self.data, self.data["model"]["path"], timeout)]

    def _warmup(self, stage: str, out: StageOutcome, beat: Heartbeat, extra_env: dict | None = None,
                log_files: tuple = ()) -> WarmupServer:
        """Start a server, wait for /ready, send one request, check its log and
        settings, probe telemetry; always tear it down."""
        timeout = stage_timeout(self.data, stage)
        env = self.env(stage, {"SGLANG_WARMUP_TIMEOUT": str(int(timeout)), **(extra_env or {})})
        argv = self._server_argv(stage)
        out.env = self.routing()
        out.artifacts["argv"] = argv
        sink = self._sink(*log_files)
        server = WarmupServer(self.runtime, self.data["server"]["host"], self.data["server"]["port"], sink)
        beat.set("launch")
        server.start(argv, env)
        error: Exception | None = None
        try:
            beat.set("readiness")
            ready_s = server.wait_ready(self.data["timeouts"]["readiness_s"], lambda *_: None)
            out.artifacts["ready_after_s"] = round(ready_s, 3)
            info = server.server_info()
            mismatch = settings_mismatch(server.scan, info, self.data["server"]["settings"],
                                         KV_LOG_DTYPES.get(self.data["server"]["settings"].get("kv_cache_dtype"), ()))
            if mismatch:
                raise StageFailed("settings_mismatch", mismatch)
            beat.set("generate")
            before = server.prompt_tokens()
            prom_before = self._prometheus_value()
            response = server.generate(min(timeout, 600))
            after = server.prompt_tokens()
            out.artifacts["generate"] = {"completion_tokens": (response.get("meta_info") or {}).get("completion_tokens"),
                                         "finish_reason": (response.get("meta_info") or {}).get("finish_reason")}
            if before is not None and after is not None:
                out.artifacts["metrics_delta"] = {PROMPT_TOKENS: after - before}
            if self.data["telemetry"]["probe"]:
                beat.set("telemetry_probe")
                out.telemetry = self._telemetry_probe(prom_before)
                self.telemetry.append(out.telemetry)
                if not out.telemetry.get("ok"):
                    out.warnings.append(f"telemetry probe: {out.telemetry.get('error') or 'no samples'}")
        except (StageFailed, ServerError) as exc:
            error = exc
        finally:
            beat.set("teardown")
            gone, how = server.teardown(self.data["timeouts"]["teardown_s"])
            sink.close()
            out.artifacts["cleanup"] = {"kill_sent": how != "already exited", "killed": gone,
                                        "timeout_s": self.data["timeouts"]["teardown_s"], "detail": how}
        if error is not None:
            raise error
        if not gone:
            raise StageFailed("cleanup_failed", f"the server's processes survived teardown ({how})")
        self._check_log(server, stage)
        return server

    def _check_log(self, server: WarmupServer, stage: str) -> None:
        settings = self.data["server"]["settings"]
        expected = KV_LOG_DTYPES.get(settings.get("kv_cache_dtype"), ())
        mismatch = settings_mismatch(server.scan, {}, settings, expected)
        if mismatch:
            raise StageFailed("settings_mismatch", mismatch)

    def _prometheus_value(self) -> float | None:
        if not self.data["telemetry"]["probe"]:
            return None
        _, value, _ = prometheus_samples(self.data["telemetry"]["prometheus_url"], PROMPT_TOKENS)
        return value

    def _telemetry_probe(self, before: float | None) -> dict:
        """Wait until Prometheus has scraped the request (the delta of
        sglang:prompt_tokens_total), within three scrape intervals."""
        url = self.data["telemetry"]["prometheus_url"]
        query = f'sum({PROMPT_TOKENS}{{job="sglang"}})'
        deadline = time.monotonic() + 3 * self.data["telemetry"]["scrape_interval_s"] + 5
        count, value, error = 0, None, ""
        while time.monotonic() < deadline:
            count, value, error = prometheus_samples(url, f'{PROMPT_TOKENS}{{job="sglang"}}')
            if value is not None and value > (before or 0):
                return {"ok": True, "sample_count": count, "prometheus_query": query,
                        "before": before, "after": value}
            time.sleep(0.5)
        return {"ok": False, "sample_count": count, "prometheus_query": query, "before": before, "after": value,
                "error": error or "Prometheus did not see the request's prompt tokens"}

    # ------------------------------------------------------------ stages
    def _stage_deep_gemm(self, out: StageOutcome, beat: Heartbeat) -> None:
        timeout = stage_timeout(self.data, "deep_gemm")
        compile_log = self.ctx.path(f"profiles/deep_gemm/{self.slug}/compile.log")
        argv = self._server_argv("deep_gemm")
        env = self.env("deep_gemm", {"SGLANG_WARMUP_TIMEOUT": str(int(timeout))})
        out.env = self.routing()
        out.artifacts.update(argv=argv, cache_dir=self._artifact("profiles/deep_gemm"),
                             compile_log=self._artifact(f"profiles/deep_gemm/{self.slug}/compile.log"))
        before = tree_stats(self.ctx.path("profiles/deep_gemm"))
        sink = self._sink(compile_log)
        server = WarmupServer(self.runtime, self.data["server"]["host"], self.data["server"]["port"], sink)
        beat.set("compile")
        server.start(argv, env)
        rc = None
        deadline = time.monotonic() + timeout + 60
        try:
            while rc is None and time.monotonic() < deadline:
                rc = server.proc.wait(1.0)
        finally:
            gone, how = server.teardown(self.data["timeouts"]["teardown_s"])
            sink.close()
            out.artifacts["cleanup"] = {"kill_sent": how != "already exited", "killed": gone,
                                        "timeout_s": self.data["timeouts"]["teardown_s"], "detail": how}
        tail = server.scan.tail[-20:]
        if rc is None:
            raise StageFailed("readiness_timeout", f"compile_deep_gemm still running after {timeout:g}s",
                              compile_log_tail=tail)
        if rc != 0:
            err = server.exited_error(rc)
            raise StageFailed(err.error_type, str(err), compile_log_tail=tail)
        if not gone:
            raise StageFailed("cleanup_failed", f"compile_deep_gemm left processes behind ({how})")
        self._check_log(server, "deep_gemm")
        after = tree_stats(self.ctx.path("profiles/deep_gemm"))
        out.artifacts["cubins"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files,
                                   "disk_delta_bytes": after.bytes - before.bytes}

    def _stage_flashinfer(self, out: StageOutcome, beat: Heartbeat) -> None:
        before = tree_stats(self.ctx.path("profiles/flashinfer"))
        out.artifacts["workspace_dir"] = self._artifact("profiles/flashinfer")
        log = self.ctx.path(f"profiles/flashinfer/{self.slug}/warmup.log")
        server = self._warmup("flashinfer", out, beat, log_files=(log,))
        after = tree_stats(self.ctx.path("profiles/flashinfer"))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}
        out.artifacts["jit_modules_built"] = server.scan.flashinfer_builds
        problem = self._flashinfer_problem()
        if problem:
            raise StageFailed("verify_failed", f"after the warm-up the FlashInfer cache is not warm: {problem}")

    def _stage_inductor(self, out: StageOutcome, beat: Heartbeat) -> None:
        before = tree_stats(self.ctx.path("profiles/torchinductor"))
        out.artifacts["cache_dir"] = self._artifact("profiles/torchinductor")
        log = self.ctx.path(f"profiles/torchinductor/{self.slug}/warmup.log")
        self._warmup("inductor", out, beat, log_files=(log,))
        after = tree_stats(self.ctx.path("profiles/torchinductor"))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}

    def _stage_moe_tune(self, out: StageOutcome, beat: Heartbeat) -> None:
        opts = self.data["caches"]["moe_tune"]
        triton = self.rt.version("triton")
        if not triton:
            raise StageFailed("tuner_execution_error", "triton is not installed in the runtime")
        configs_rel = f"profiles/moe_configs/configs/{triton_config_dirname(triton)}"
        target = self.ctx.path(configs_rel)
        work = self.ctx.path(f"profiles/moe_configs/.work-{self.run_id}")
        with self.owner():
            self._seed_packaged_configs()
            os.makedirs(target, exist_ok=True)
            os.makedirs(work, exist_ok=True)
        written: dict = {}
        runs = []
        try:
            for batch in opts["batch_sizes"]:
                beat.set(f"tune batch_size={batch}")
                argv = [self.runtime.python, opts["script"], "--model", self.data["model"]["path"],
                        "--tp-size", str(self.data["tp"]), "--dtype", opts["dtype"], "--batch-size", str(batch),
                        "--tune", *opts["tuner_args"]]
                rc, produced = self._run_tuner(argv, work, self.rpath(f"profiles/moe_configs/.work-{self.run_id}"),
                                               stage_timeout(self.data, "moe_tune"))
                runs.append({"batch_size": batch, "exit_code": rc, "files": sorted(produced)})
                if rc != 0:
                    raise StageFailed("tuner_execution_error", f"tuner exited {rc} for batch size {batch}",
                                      runs=runs)
                if not produced:
                    raise StageFailed("tuner_execution_error", f"tuner wrote no config for batch size {batch}",
                                      runs=runs)
                with self.owner():
                    for name in produced:
                        written[name] = _merge_config(os.path.join(work, name), os.path.join(target, name))
                        os.unlink(os.path.join(work, name))  # the next batch size writes the same name
        finally:
            with self.owner():
                shutil.rmtree(work, ignore_errors=True)
        out.artifacts["tuner_runs"] = runs
        out.artifacts["config_files"] = {name: {**self._artifact(f"{configs_rel}/{name}"), "config_hash": digest}
                                         for name, digest in sorted(written.items())}
        out.artifacts["triton_version"] = triton
        # verify consumption: a server started with SGLANG_MOE_CONFIG_DIR must log our file
        self.moe_ready = True
        log = self.ctx.path(f"profiles/moe_configs/{self.slug}/verify.log")
        server = self._warmup("moe_tune", out, beat, log_files=(log,))
        ours = [p for p in server.scan.moe_configs if p.startswith(self.rpath("profiles/moe_configs"))]
        out.artifacts["verified_in_log"] = bool(ours)
        out.artifacts["verify_log"] = self._artifact(f"profiles/moe_configs/{self.slug}/verify.log")
        if not ours:
            self.moe_ready = False
            seen = server.scan.moe_configs[-1] if server.scan.moe_configs else (
                "the default MoE config" if server.scan.moe_default else "no MoE config line")
            raise StageFailed("verify_log_missing",
                              f"the server did not log 'Using MoE kernel config from' a tuned file (saw {seen})")

    def _run_command(self, stage: str, argv: list, env: dict, cwd: str, timeout: float, log_files: tuple = ()):
        """Run argv in the runtime with its output in the session log (and
        `log_files`); always tear its process group down. (exit code or None
        on timeout, the log tail, the teardown record)."""
        from .exec_server import LogScan

        scan = LogScan()
        sink = self._sink(*log_files)

        def on_line(line: str) -> None:
            scan.feed(line)
            sink(line)

        try:
            proc = self.runtime.spawn(argv, env, on_line, cwd=cwd)
        except OSError as exc:
            sink.close()
            raise StageFailed("command_failed", f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        rc = proc.wait(timeout)
        gone, how = self.runtime.teardown(proc, self.data["timeouts"]["teardown_s"])
        sink.close()
        cleanup = {"kill_sent": how != "already exited", "killed": gone,
                   "timeout_s": self.data["timeouts"]["teardown_s"], "detail": how}
        if rc is not None and not gone:
            raise StageFailed("cleanup_failed", f"{argv[0]} left processes behind ({how})")
        return rc, scan.tail[-20:], cleanup

    def _stage_custom(self, stage: str, out: StageOutcome, beat: Heartbeat) -> None:
        opts = stage_options(self.data, stage)
        rel = cache_dir(stage)
        timeout = stage_timeout(self.data, stage)
        extra = {"SGLPREP_CACHE_DIR": self.rpath(rel), "SGLPREP_STAGE": stage}
        out.env = {**self.routing(), **extra}
        out.artifacts.update(argv=list(opts["command"]), cache_dir=self._artifact(rel))
        before = tree_stats(self.ctx.path(rel))
        beat.set("command")
        rc, tail, cleanup = self._run_command(stage, list(opts["command"]), self.env(stage, extra), self.rpath(rel),
                                              timeout, (self.ctx.path(f"{rel}/run.log"),))
        out.artifacts["cleanup"] = cleanup
        if rc is None:
            raise StageFailed("command_timeout", f"{opts['command'][0]} still running after {timeout:g}s",
                              log_tail=tail)
        if rc != 0:
            raise StageFailed("command_failed", f"{opts['command'][0]} exited {rc}", exit_code=rc, log_tail=tail)
        after = tree_stats(self.ctx.path(rel))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}

    def _stage_flashinfer_direct(self, out: StageOutcome, beat: Heartbeat) -> None:
        """Each module through FlashInfer's own build_and_load, one process per
        module, `max_parallel` at a time (never build_jit_specs, whose output
        the runtime rebuilds)."""
        from .runtime_flashinfer import BUILD_SCRIPT, module_key

        opts = self.data["caches"]["flashinfer"]
        timeout = stage_timeout(self.data, "flashinfer")
        env = self.env("flashinfer", {"MAX_JOBS": str(opts["jobs_per_module"])})
        out.env = self.routing()
        out.artifacts["workspace_dir"] = self._artifact("profiles/flashinfer")
        before = tree_stats(self.ctx.path("profiles/flashinfer"))
        pending = list(enumerate(opts["modules"]))
        running: dict = {}
        results: list = [None] * len(pending)
        deadline = time.monotonic() + timeout
        log = self.ctx.path(f"profiles/flashinfer/{self.slug}/build.log")
        try:
            while pending or running:
                while pending and len(running) < opts["max_parallel"]:
                    index, spec = pending.pop(0)
                    lines: list = []
                    sink = self._sink(log)

                    def on_line(line, sink=sink, lines=lines):
                        sink(line)
                        if line.startswith("FLASHINFER_MODULE "):
                            lines.append(line)

                    argv = [self.runtime.python, "-B", "-c", BUILD_SCRIPT, json.dumps(spec, sort_keys=True)]
                    try:
                        proc = self.runtime.spawn(argv, env, on_line)
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
                self.runtime.teardown(proc, self.data["timeouts"]["teardown_s"])
                sink.close()
            out.artifacts["modules"] = results
        after = tree_stats(self.ctx.path("profiles/flashinfer"))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}
        problem = self._flashinfer_problem()
        if problem:
            raise StageFailed("verify_failed", f"after the builds the FlashInfer cache is not warm: {problem}")

    def _seed_packaged_configs(self) -> None:
        """SGLANG_MOE_CONFIG_DIR hides SGLang's packaged configs: copy them in once."""
        dest = self.ctx.path("profiles/moe_configs/configs")
        src = os.path.join(self.rt.sglang_dir, PACKAGED_MOE_CONFIGS) if self.rt.sglang_dir else ""
        if src and os.path.isdir(src) and not os.path.isdir(dest):
            shutil.copytree(src, dest, copy_function=shutil.copyfile)
        os.makedirs(dest, exist_ok=True)

    def _run_tuner(self, argv: list, cwd: str, runtime_cwd: str, timeout: float) -> tuple[int, list]:
        """Run the tuner in `runtime_cwd` (the runtime's view of host dir `cwd`)."""
        before = set(os.listdir(cwd))
        sink = self._sink()
        try:
            proc = self.runtime.spawn(argv, self.env("moe_tune"), sink, cwd=runtime_cwd)
        except OSError as exc:
            raise StageFailed("tuner_execution_error", f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        rc = proc.wait(timeout)
        if rc is None:
            self.runtime.teardown(proc, self.data["timeouts"]["teardown_s"])
            raise StageFailed("tuner_execution_error", f"tuner still running after {timeout:g}s")
        self.runtime.teardown(proc, self.data["timeouts"]["teardown_s"])
        produced = [n for n in os.listdir(cwd) if n.endswith(".json") and n not in before]
        return rc, produced

    # ------------------------------------------------------------ verify
    def _flashinfer_problem(self) -> str:
        return flashinfer_problem(self.desired, HostFacts(self.runtime_environ), self.ctx, self.rt)

    def _verify(self, stage: str, beat: Heartbeat) -> dict:
        if is_custom(stage):
            argv = list(stage_options(self.data, stage)["verify"])
            rel = cache_dir(stage)
            extra = {"SGLPREP_CACHE_DIR": self.rpath(rel), "SGLPREP_STAGE": stage}
            rc, tail, _ = self._run_command(stage, argv, self.env(stage, extra), self.rpath(rel),
                                            stage_timeout(self.data, stage))
            evidence = {"method": "the stage's verify command", "argv": argv, "exit_code": rc, "log_tail": tail,
                        "ok": rc == 0}
            if rc != 0:
                raise StageFailed("verify_failed", f"verify command {argv[0]} exited {rc}", evidence=evidence)
            return evidence
        if stage == "flashinfer":
            version, cap = self.rt.version("flashinfer"), self.rt.gpus[0].compute_cap
            host_ops = flashinfer_cached_ops(self.ctx.path("profiles"), version, cap)
            modules = flashinfer_modules(host_ops, flashinfer_cached_ops(self.rpath("profiles"), version, cap),
                                         self.rt.ninja if self.ctx.runtime_kind == "local" else None)
            problem = flashinfer_cache_problem(modules, self.rt.flashinfer_data_newest_mtime)
            evidence = {"method": "host-side: .so present, `ninja -n` has no work, build.ninja names its dir",
                        "cached_ops": host_ops, "modules": [m._asdict() for m in modules], "ok": not problem}
            if problem:
                raise StageFailed("verify_failed", problem, evidence=evidence)
            if any(m.ninja == "unknown" for m in modules):
                evidence["note"] = "ninja not available in the runtime: build files not dry-run"
            return evidence
        # SGLang's own JIT: a second start must not compile anything
        argv = self._server_argv("inductor" if stage == "inductor" else "verify", module="sglang.launch_server")
        sink = self._sink()
        server = WarmupServer(self.runtime, self.data["server"]["host"], self.data["server"]["port"], sink)
        env = self.env(stage, {"SGLANG_CRASH_ON_JIT_COMPILE": "1"})
        server.start(argv, env)
        try:
            ready = server.wait_ready(self.data["timeouts"]["readiness_s"], lambda *_: None)
        except ServerError as exc:
            raise StageFailed("verify_failed", f"a restart with SGLANG_CRASH_ON_JIT_COMPILE=1 failed: {exc}",
                              evidence={"method": "restart with SGLANG_CRASH_ON_JIT_COMPILE=1",
                                        "log_tail": server.scan.tail[-10:]}) from None
        finally:
            server.teardown(self.data["timeouts"]["teardown_s"])
        return {"method": "restart with SGLANG_CRASH_ON_JIT_COMPILE=1", "ok": True, "ready_after_s": round(ready, 3),
                "flashinfer_builds": server.scan.flashinfer_builds}

    def _artifact(self, rel: str) -> dict:
        return {"container_path": self.rpath(rel) if self.ctx.runtime_kind != "local" else None,
                "host_path": self.ctx.path(rel)}


def _merge_config(src: str, dest: str) -> str:
    """Merge a tuner's batch-size-keyed JSON into `dest` (atomically); its sha256."""
    import hashlib

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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class StagesExecutor:
    """Executes the `stage:*` changes of one apply and journals them: a stage
    JSON for every stage (noop and skipped ones too), written before the
    aggregate `prep_result.json`."""

    handles = ("stage",)

    def __init__(self, plan, desired: Desired, ctx: Context, log: SessionLog, run_id: str, progress=None,
                 environ: dict | None = None):
        self.plan, self.desired, self.ctx, self.log, self.run_id = plan, desired, ctx, log, run_id
        self.progress = progress
        self.environ = environ
        self.outcomes: dict = {}
        self.runner: StageRunner | None = None
        self.started_at = utc_now_iso()
        self.t0 = time.monotonic()

    def _runner(self) -> StageRunner:
        if self.runner is None:
            from .plan import runtime_facts

            data = self.desired.data
            facts = HostFacts(self.environ)
            rt = runtime_facts(self.desired, facts, self.ctx)  # probed now: the container is up by this point
            if self.ctx.runtime_kind == "docker":
                from .exec_docker import DockerRuntime

                runtime = DockerRuntime(data["runtime"]["container"]["name"], data["runtime"]["python"],
                                        data["runtime"]["env"], self.ctx.owner.uid, self.ctx.owner.gid,
                                        self.environ)
            else:
                from .exec_runtime import LocalRuntime

                home = facts.home_of(self.ctx.owner.uid) if self.ctx.owner.uid != os.geteuid() else \
                    facts.identity().home
                runtime = LocalRuntime(data["runtime"]["python"], data["runtime"]["env"], self.ctx.owner.uid,
                                       self.ctx.owner.gid, home if home and os.path.isdir(home) else "/tmp",
                                       self.environ)
            self.runner = StageRunner(self.desired, self.ctx, runtime, rt, self.log, self.run_id, self.progress)
            self.runner.moe_ready = self._moe_ready()
            self.runner.flags_checked = self.plan.find("check:server_flags") is not None
        return self.runner

    def _moe_ready(self) -> bool:
        change = self.plan.find("stage:moe_tune")
        return change is not None and change.action == "noop" and change.reason == "valid_signature"

    def execute(self, change):
        from .exec_storage import CHANGED, FAILED, UNCHANGED, Result

        runner = self._runner()
        if runner.rt.status != "ok":
            outcome = StageOutcome(stage=change.name, status="error", ran=False, error_type="runtime_unavailable",
                                   errors=[{"error_type": "runtime_unavailable", "message": runner.rt.problem}])
        else:
            outcome = runner.run(change.name)
        self.outcomes[change.name] = outcome
        self._write_stage(change.name, outcome)
        if outcome.status == "ok":
            return Result(change.address, change.action, CHANGED, f"primed in {outcome.duration_s:.1f}s")
        if outcome.status == "noop":
            return Result(change.address, change.action, UNCHANGED, "already primed by another run")
        message = outcome.errors[-1]["message"] if outcome.errors else "failed"
        return Result(change.address, change.action, FAILED, message, outcome.error_type or "")

    def skip(self, change, why: str) -> None:
        self.outcomes[change.name] = StageOutcome(stage=change.name, status="skipped", ran=False, reason=why,
                                                  errors=[{"error_type": "dependency_failed", "message": why}])
        self._write_stage(change.name, self.outcomes[change.name])

    def _write_stage(self, stage: str, outcome: StageOutcome) -> None:
        from .journal import write_run_file

        with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
            write_run_file(self.run_dir, f"stages/{file_name(stage)}.json", outcome.to_json())

    @property
    def run_dir(self) -> str:
        return self.ctx.path(f"telemetry/container_runs/{self.run_id}")

    def finish(self) -> tuple[str, str, int]:
        """Stage files for the stages that did not run, then the aggregate.
        Returns (prep_result path, RESULT_STATUS line, exit code of the first failing stage or 0)."""
        from .journal import write_run_file

        names = stage_names(self.desired.data)
        for stage in names:
            if stage in self.outcomes:
                continue
            change = self.plan.find(f"stage:{stage}")
            status = "skipped" if change is None or change.reason == "skipped" else "noop"
            outcome = StageOutcome(stage=stage, status=status, ran=False,
                                   reason=change.reason if change else "skipped",
                                   signature=change.before or {} if change else {})
            self.outcomes[stage] = outcome
            self._write_stage(stage, outcome)
        doc = self.prep_result()
        path = ""
        try:
            with as_owner(self.ctx.owner.uid, self.ctx.owner.gid):
                path = write_run_file(self.run_dir, "prep_result.json", doc)
        except OSError as exc:  # the stage files stay the source of truth
            self.log.event("AGGREGATE_FAILED", error=str(exc))
        line = "RESULT_STATUS " + doc["status"] + " " + " ".join(
            f"{s}:{self.outcomes[s].status}" for s in names)
        code = next((self.outcomes[s].status_code for s in names if self.outcomes[s].status == "error"), 0)
        return path, line, code

    def prep_result(self) -> dict:
        names = stage_names(self.desired.data)
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
        finished = utc_now_iso()
        routing = self.runner.routing() if self.runner else cache_env(self.ctx.runtime_path("profiles"), False)
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
                             **data["server"]["settings"], "mem_fraction": data["server"]["settings"].get(
                                 "mem_fraction_static"),
                             "warmup_port": data["server"]["port"], "write_mode": "atomic", "env": routing},
            },
            "stages": {s: self.outcomes[s].to_json() for s in names},
            "telemetry_probe": telemetry,
            "errors": errors,
            "warnings": warnings,
        }
