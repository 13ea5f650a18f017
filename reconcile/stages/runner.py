"""The generic stage run: what every stage does around its own `prime()`.

Per stage: check its server flags when the plan could not, take
`profiles/.locks/<stage>.lock` (wait with heartbeats, then `lock_timeout`),
re-check the stage against fresh facts (another run may have primed it),
write the in-progress marker, preflight (writable cache dir, free disk, the
strict port), `stage.prime()`, `stage.verify()` when asked, then write the
signature and remove the marker, only on success. Every line of every
process goes to the session log.

`StageRun` is also the toolbox the stage kinds use: paths as the host and
the runtime see them, the environment with cache routing, log sinks,
warm-up servers (start, readiness, request, log checks, teardown), commands.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from ..errors import Interrupted
from ..exec_privs import as_owner
from ..exec_server import PROMPT_TOKENS, LogScan, ServerError, WarmupServer, prometheus_samples, settings_mismatch
from ..journal import SessionLog, atomic_write_json, utc_now_iso
from ..locks import LockTimeout, acquire, lock_info, release
from ..redaction import redact, redact_argv
from ..state_flags import KV_LOG_DTYPES, cache_env
from ..state_layout import lock_path, marker_path
from . import catalog
from .plan import stage_change, want_signature
from .spec import Stage, StageFailed


@dataclass
class StageOutcome:
    stage: str
    status: str  # ok | error | noop | skipped
    ran: bool = False
    reason: str = ""
    duration_s: float = 0.0
    error_type: str | None = None
    exit_code: int = 14  # the stage's code when it failed
    artifacts: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    signature: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    telemetry: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    @property
    def status_code(self) -> int:
        return self.exit_code if self.status == "error" else 0

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

    def __init__(self, log: SessionLog, stage: str, every_s: float, say, record: list | None = None):
        self.log, self.stage, self.every_s, self.say = log, stage, every_s, say
        self.phase, self.started = "start", time.monotonic()
        self.record = record if record is not None else [self.phase]  # the last phase, for error reports
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
        self.record[0] = phase
        self.say(self.stage, phase, time.monotonic() - self.started)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            elapsed = int(time.monotonic() - self.started)
            self.log.optimize(self.stage, "progress", f"{self.phase}, {elapsed}s elapsed",
                              elapsed_s=elapsed, hint=self.phase)
            self.say(self.stage, self.phase, time.monotonic() - self.started)


class RecordingRuntime:
    """The runtime, with every process it starts recorded in the running
    stage's marker (pid, process group, start time), so that an apply that
    is killed -9 leaves behind what the next one needs to stop them."""

    def __init__(self, runtime, record):
        self._runtime, self._record = runtime, record

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def spawn(self, argv, env, on_line, cwd=None):
        proc = self._runtime.spawn(argv, env, on_line, cwd=cwd)
        self._record(proc)
        return proc


class StageRun:
    """Runs the stage changes of one apply, and lends the stages its tools."""

    def __init__(self, desired, ctx, runtime, rt_facts, log: SessionLog, run_id: str, say=None, facts=None):
        self.desired, self.ctx, self.rt = desired, ctx, rt_facts
        import psutil  # noqa: F401 - for _record_process: imported now, never after privileges drop

        self.runtime = RecordingRuntime(runtime, self._record_process)
        self._marker: dict | None = None  # the running stage's marker document
        self._marker_path = ""
        self.data = desired.data
        self.log, self.run_id = log, run_id
        self.say = say or (lambda stage, phase, elapsed: None)
        self.slug = desired.model_slug
        self.ready: set = set()  # stages whose cache is valid (their conditional routing applies)
        self.flags_checked = True  # the plan's check:server_flags ran; the executor clears it otherwise
        self.telemetry: list = []
        self.teardown_s = self.data["timeouts"]["teardown_s"]
        self._facts = facts
        self.interrupted: Interrupted | None = None  # set by run(); the executor re-raises it after journaling
        self.verify_artifacts = False  # re-hash artifacts in the re-check (as the plan did)
        self._files: list = []  # the manifest's entries of the stage just primed (what a bundle carries)

    # ------------------------------------------------------------ toolbox
    def facts(self):
        """Fresh host facts (the runtime probe is reused, never repeated)."""
        if self._facts is None:
            from ..facts_host import HostFacts

            return HostFacts(getattr(self.runtime, "environ", None))
        return self._facts.fresh()

    def owner(self):
        return as_owner(self.ctx.owner.uid, self.ctx.owner.gid)

    def path(self, rel: str) -> str:
        return self.ctx.path(rel)

    def rpath(self, rel: str) -> str:
        return self.ctx.runtime_path(rel)

    def artifact(self, rel: str) -> dict:
        return {"container_path": self.rpath(rel) if self.ctx.runtime_kind != "local" else None,
                "host_path": self.ctx.path(rel)}

    def routing(self) -> dict:
        return cache_env(self.rpath("profiles"), catalog.conditional_routing(self.ready, self.data))

    def env(self, stage: Stage, extra: dict | None = None) -> dict:
        """base environment + cache routing + the stage's own `env` + `extra`."""
        env = self.runtime.base_env()
        env.update(self.routing())
        env.update(stage.opts.get("env", {}))
        env.update(extra or {})
        return env

    def command(self, stage: Stage, module: str | None = None, argv: list | None = None) -> list:
        return [self.runtime.python, "-m", module or stage.server_module,
                *(stage.server_argv() if argv is None else argv)]

    def cleanup_record(self, gone: bool, how: str) -> dict:
        return {"kill_sent": how != "already exited", "killed": gone, "timeout_s": self.teardown_s, "detail": how}

    def sink(self, *files: str):
        """A line sink appending to the session log and to `files` (as the owner)."""
        handles = []
        with self.owner():
            for path in files:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                handles.append(open(path, "a", encoding="utf-8", buffering=1))
        lock = threading.Lock()

        def sink(line: str) -> None:
            line = self.log.clean(line)
            self.log.write(line)
            with lock:
                for fh in handles:
                    try:
                        fh.write(line + "\n")
                    except OSError as exc:  # a full disk: keep draining the process, say so in the log
                        self.log.failed = self.log.failed or f"{fh.name}: {exc.strerror or exc}"

        def close() -> None:
            for fh in handles:
                try:
                    fh.close()
                except OSError:
                    pass

        sink.close = close
        return sink

    def server(self, sink) -> WarmupServer:
        return WarmupServer(self.runtime, self.data["server"]["host"], self.data["server"]["port"], sink)

    def check_log(self, server: WarmupServer, prove_kv: bool = True) -> None:
        """The whole log against the settings; `prove_kv`: also require proof
        of the KV dtype (a warm-up has it already, from /server_info)."""
        settings = self.data["server"]["settings"]
        mismatch = settings_mismatch(server.scan, {}, settings, KV_LOG_DTYPES.get(settings.get("kv_cache_dtype"), ()))
        if mismatch:
            raise StageFailed("settings_mismatch", mismatch)
        if prove_kv:
            self._kv_dtype_proof(server, None)

    def _kv_dtype_proof(self, server: WarmupServer, info: dict | None) -> dict | None:
        """How the KV cache dtype asked for was confirmed: the log line, or
        (when the log has none, e.g. --log-level warning) /server_info. No
        proof is a failure (verify_log_missing), never a silent pass."""
        expected = KV_LOG_DTYPES.get(self.data["server"]["settings"].get("kv_cache_dtype"), ())
        if not expected:
            return None
        if server.scan.kv_dtypes:
            return {"via": "log", "dtype": server.scan.kv_dtypes[-1]}
        states = (info or {}).get("internal_states") or []
        seen = [st.get("kv_cache_dtype") for st in states if isinstance(st, dict) and st.get("kv_cache_dtype")]
        if not seen:
            where = "and /server_info does not report it" if info is not None else "(and no /server_info to ask)"
            raise StageFailed("verify_log_missing", f"the server log has no 'KV Cache is allocated' line {where}: "
                              f"the KV cache dtype cannot be confirmed (is --log-level above info?)")
        if any(d not in expected for d in seen):
            raise StageFailed("settings_mismatch", f"KV cache dtype {seen[0]} on /server_info, asked "
                              f"{self.data['server']['settings'].get('kv_cache_dtype')} ({' or '.join(expected)})")
        return {"via": "/server_info", "dtype": seen[0]}

    def warmup(self, stage: Stage, out, beat, extra_env: dict | None = None, log_files: tuple = ()) -> WarmupServer:
        """Start the stage's server, wait for /ready, send one request, check
        its log and settings, probe telemetry; always tear it down."""
        timeout = stage.timeout()
        env = self.env(stage, {"SGLANG_WARMUP_TIMEOUT": str(int(timeout)), **(extra_env or {})})
        argv = self.command(stage)
        out.env = self.routing()
        out.artifacts["argv"] = redact_argv(argv)
        sink = self.sink(*log_files)
        server = self.server(sink)
        beat.set("launch")
        server.start(argv, env)
        out.artifacts["warmup_pid"] = getattr(server.proc, "pid", None)
        error: Exception | None = None
        try:
            beat.set("readiness")
            ready_s = server.wait_ready(self.data["timeouts"]["readiness_s"], lambda *_: None)
            out.artifacts["ready_after_s"] = round(ready_s, 3)
            info = server.server_info()
            settings = self.data["server"]["settings"]
            mismatch = settings_mismatch(server.scan, info, settings,
                                         KV_LOG_DTYPES.get(settings.get("kv_cache_dtype"), ()))
            if mismatch:
                raise StageFailed("settings_mismatch", mismatch)
            out.artifacts["kv_dtype_checked"] = self._kv_dtype_proof(server, info)
            beat.set("generate")
            before = server.prompt_tokens()
            prom_before = self._prometheus_value()
            response = server.generate(min(timeout, 600))
            after = server.prompt_tokens()
            meta = response.get("meta_info") or {}
            out.artifacts["generate"] = {"completion_tokens": meta.get("completion_tokens"),
                                         "finish_reason": meta.get("finish_reason")}
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
            gone, how = server.teardown(self.teardown_s)
            sink.close()
            out.artifacts["cleanup"] = self.cleanup_record(gone, how)
        if error is not None:
            raise error
        if not gone:
            raise StageFailed("cleanup_failed", f"the server's processes survived teardown ({how})")
        self.check_log(server, prove_kv=False)
        return server

    def run_command(self, argv: list, env: dict, cwd: str, timeout: float, log_files: tuple = ()):
        """Run argv in the runtime with its output in the session log (and
        `log_files`); always tear its process group down. (exit code or None
        on timeout, the log tail, the teardown record)."""
        scan = LogScan()
        sink = self.sink(*log_files)

        def on_line(line: str) -> None:
            scan.feed(line)
            sink(line)

        try:
            proc = self.runtime.spawn(argv, env, on_line, cwd=cwd)
        except OSError as exc:
            sink.close()
            raise StageFailed("command_failed", f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        try:
            rc = proc.wait(timeout)
        finally:  # also when interrupted: never leave the command's group behind
            gone, how = self.runtime.teardown(proc, self.teardown_s)
            sink.close()
        if rc is not None and not gone:
            raise StageFailed("cleanup_failed", f"{argv[0]} left processes behind ({how})")
        return rc, scan.tail[-20:], self.cleanup_record(gone, how)

    def verify_restart(self, stage: Stage, beat) -> dict:
        """SGLang's own JIT: a second start must not compile anything."""
        argv = self.command(stage, module="sglang.launch_server", argv=stage.verify_argv())
        sink = self.sink()
        server = self.server(sink)
        env = self.env(stage, {"SGLANG_CRASH_ON_JIT_COMPILE": "1"})
        server.start(argv, env)
        try:
            ready = server.wait_ready(self.data["timeouts"]["readiness_s"], lambda *_: None)
        except ServerError as exc:
            raise StageFailed("verify_failed", f"a restart with SGLANG_CRASH_ON_JIT_COMPILE=1 failed: {exc}",
                              evidence={"method": "restart with SGLANG_CRASH_ON_JIT_COMPILE=1",
                                        "log_tail": server.scan.tail[-10:]}) from None
        finally:
            server.teardown(self.teardown_s)
            sink.close()
        return {"method": "restart with SGLANG_CRASH_ON_JIT_COMPILE=1", "ok": True, "ready_after_s": round(ready, 3),
                "flashinfer_builds": server.scan.flashinfer_builds}

    # ------------------------------------------------------------ the run
    def run(self, stage: Stage) -> StageOutcome:
        started = time.monotonic()
        out = StageOutcome(stage=stage.name, status="error", ran=True, exit_code=stage.exit_code)
        want = want_signature(stage, self.desired, self.rt)
        out.signature = want
        self.log.optimize(stage.name, "start",
                          f"starting {{model={self.data['model']['path']}, tp={self.data['tp']}}}",
                          settings=redact({"model": self.data["model"]["path"], "tp": self.data["tp"],
                                           **self.data["server"]["settings"]}))
        lock_held = False
        phase = ["start"]
        try:
            with Heartbeat(self.log, stage.name, self.data["heartbeat_s"], self.say, phase) as beat:
                if stage.starts_server and not self.flags_checked:
                    beat.set("check_flags")
                    self._validate_flags(stage)
                beat.set("wait_lock")
                self._acquire_lock(stage)
                lock_held = True
                fresh = stage_change(stage, self.desired, self.facts(), self.ctx, self.rt, self.verify_artifacts)
                if fresh.action == "noop":
                    out.status, out.ran, out.reason = "noop", False, fresh.reason
                    return out
                if fresh.action == "blocked":
                    raise StageFailed(fresh.reason, f"blocked since the plan: {fresh.message}")
                out.reason = fresh.message
                self._write_marker(stage)
                beat.set("preflight")
                self._preflight(stage)
                if fresh.reason == "artifact_damaged":
                    beat.set("repair")
                    out.artifacts["repaired"] = self._remove_damaged(stage, fresh.observed["artifacts"]["damaged"])
                before = self._disk(stage)
                pulled = self._try_pull(stage, want, out, beat)
                if pulled and stage.opts.get("verify"):
                    beat.set("verify")
                    try:  # verified exactly as a local build; a bundle that fails it means compiling here
                        out.evidence = stage.verify(self, out, beat)
                    except StageFailed as exc:
                        pulled = self._drop_pulled(stage, out, f"failed verification here: {exc}")
                if not pulled:
                    stage.prime(self, out, beat)
                    if stage.opts.get("verify"):
                        beat.set("verify")
                        out.evidence = stage.verify(self, out, beat)
                after = self._disk(stage)
                out.artifacts["files_delta"] = after.files - before.files
                out.artifacts["disk_delta_bytes"] = after.bytes - before.bytes
                beat.set("manifest")
                self._write_manifest(stage, out)
                self._write_signature(stage, want, stage.fills(out))
                if not pulled:
                    self._push(stage, want, out, beat)
                self._remove_marker(stage)
                out.status = "ok"
        except StageFailed as exc:
            out.error_type = exc.error_type
            out.errors.append({"error_type": exc.error_type, "message": str(exc), **exc.details})
        except ServerError as exc:
            out.error_type = exc.error_type
            out.errors.append({"error_type": exc.error_type, "message": str(exc)})
        except Interrupted as exc:
            # the stage's processes were torn down by the code it interrupted
            # (every spawn sits in a try/finally); its marker stays: partial cache
            out.error_type = "interrupted"
            out.errors.append({"error_type": "interrupted", "message": f"{exc} during {phase[0]}",
                               "signal": exc.name})
            self.interrupted = exc
        except Exception as exc:  # a bug or an unexpected fault: say so, never "ok" or "noop"
            out.error_type = "internal_error"
            summary = " ".join(str(exc).split())[:300]
            out.errors.append({"error_type": "internal_error", "message": f"{type(exc).__name__}: {summary}"
                               .rstrip(": "), "phase": phase[0]})
        finally:
            self._marker = None  # the marker stays on disk when the stage did not succeed
            if lock_held:
                release(self.path(lock_path(stage.file_name)), stage.file_name, self.owner)
            out.duration_s = time.monotonic() - started
            if out.status == "ok":
                self.ready.add(stage.name)
            self.log.optimize(stage.name, "end", f"{out.status} in {out.duration_s:.1f}s"
                              + (f" ({out.error_type}: {out.errors[-1]['message']})" if out.errors else ""),
                              status=out.status, duration_s=round(out.duration_s, 3),
                              **({"error_type": out.error_type} if out.error_type else {}))
        return out

    def _validate_flags(self, stage: Stage) -> None:
        """The plan could not ask the runtime's parser (the container was not up):
        ask it now, before any GPU time."""
        from ..facts_stages import validate_server_flags

        if self.ctx.runtime_kind == "docker":
            from ..facts_docker import docker_prober

            prober = docker_prober(self.runtime.container, self.ctx.owner.uid, self.ctx.owner.gid,
                                   self.runtime.base_env(), getattr(self.runtime, "environ", None))
        else:
            from ..facts_runtime import local_prober

            prober = local_prober(self.runtime.base_env(), self.ctx.owner.uid, self.ctx.owner.gid)
        check = validate_server_flags(self.runtime.python, prober, {stage.name: stage.flags_argv()})
        if not check.ran or check.failed:
            cause = check.cause or next(iter(check.failed.values()))
            raise StageFailed("flag_check_failed", f"could not run sglang {self.rt.version('sglang')}'s argument "
                              f"parser in the runtime: {cause} (the flags were not judged)")
        if check.rejected:
            raise StageFailed("flags_rejected", f"sglang {self.rt.version('sglang')} rejects the {stage.name} server "
                              f"flags: {check.rejected[stage.name]}")

    # ------------------------------------------------------------ lock, marker, preflight
    def _acquire_lock(self, stage: Stage) -> None:
        path = self.path(lock_path(stage.file_name))
        timeout = self.data["timeouts"]["lock_s"]

        def on_stale(why: str) -> None:
            self.log.optimize(stage.name, "progress", f"reclaiming stale lock ({why})", hint="stale_lock")

        def on_wait(lock, why: str, held: float) -> None:
            self.log.optimize(stage.name, "wait_lock", f"waiting for the lock, {why}", slug=self.slug,
                              held_for_s=round(held, 1), owner_pid=lock.owner_pid)

        try:
            acquire(path, stage.file_name, lock_info(self.ctx.hostname, f"sglprep apply (stage {stage.name})"),
                    self.ctx.hostname, timeout, self.owner, on_stale=on_stale, on_wait=on_wait,
                    wait_every_s=min(self.data["heartbeat_s"], 30))
        except LockTimeout as exc:
            raise StageFailed("lock_timeout", f"{path}: {exc}; waited {timeout:g}s (timeouts.lock_s)",
                              owner_pid=exc.lock.owner_pid, started_at=exc.lock.started_at) from None

    def _write_marker(self, stage: Stage) -> None:
        self._marker_path = self.path(marker_path(stage.file_name))
        self._marker = {"owner_pid": os.getpid(), "started_at": utc_now_iso(), "run_id": self.run_id,
                        "host": self.ctx.hostname, "processes": []}
        with self.owner():
            atomic_write_json(self._marker_path, self._marker)

    def _record_process(self, proc) -> None:
        """Add a started process to the marker (before anything waits on it)."""
        if self._marker is None or not getattr(proc, "pid", 0):
            return
        import psutil

        try:
            created = psutil.Process(proc.pid).create_time()
        except (psutil.Error, OSError):
            return
        self._marker["processes"].append({"pid": proc.pid, "pgid": getattr(proc, "pgid", proc.pid) or proc.pid,
                                          "create_time": created})
        with self.owner():
            atomic_write_json(self._marker_path, self._marker)

    def _remove_marker(self, stage: Stage) -> None:
        self._marker = None
        with self.owner():
            try:
                os.unlink(self.path(marker_path(stage.file_name)))
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ bundles
    def _bundles(self, stage: Stage) -> dict | None:
        settings = self.data["bundles"]
        return settings if settings["registry"] and stage.portable else None

    def _registry(self, settings: dict):
        from ..facts_registry import Registry

        return Registry(settings["registry"], settings["insecure"], settings["timeout_s"],
                        getattr(self.runtime, "environ", None))

    def _try_pull(self, stage: Stage, want: dict, out, beat) -> bool:
        """The cache from the registry instead of a compile, when it has this
        signature's bundle and the bundle checks out; False: compile here."""
        from ..exec_bundles import BundleError, pull
        from ..facts_registry import bundle_fact

        settings = self._bundles(stage)
        if settings is None or not settings["pull"]:
            return False
        found = bundle_fact(settings, stage.file_name, want, getattr(self.runtime, "environ", None))
        if found.kind != "present":
            if found.kind == "unreachable":
                out.warnings.append(f"bundle registry unreachable, compiled here: {found.error}")
            return False
        beat.set("pull bundle")
        try:
            files, fills, anchors = pull(self._registry(settings), settings["repository"], found.tag, found.digest,
                                         self.ctx.root, stage.artifact_dirs(), self.owner,
                                         {name: rel for name, (rel, _) in catalog.caches().items()}, signature=want)
        except BundleError as exc:
            out.warnings.append(f"bundle {found.tag} refused, compiled here: {exc}")
            self.log.optimize(stage.name, "progress", f"bundle refused: {exc}", hint="bundle")
            return False
        out.artifacts["bundle"] = {"pulled": found.digest, "tag": found.tag, "files": len(files),
                                   "registry": settings["registry"], "repository": settings["repository"]}
        if fills:
            out.artifacts["filled"] = fills
        try:
            beat.set("relocate")
            stage.relocate(self, anchors, out)
        except StageFailed as exc:
            return self._drop_pulled(stage, out, str(exc))
        problem = stage.pulled_problem(self)
        if problem:
            return self._drop_pulled(stage, out, f"not warm here after the pull: {problem}")
        self.log.optimize(stage.name, "progress", f"pulled bundle {found.tag} ({len(files)} files)", hint="bundle")
        return True

    def _drop_pulled(self, stage: Stage, out, why: str) -> bool:
        """A pulled bundle that is not valid here: say so and compile here
        (the compile rebuilds what is stale; the marker is still down)."""
        bundle = out.artifacts.pop("bundle", {})
        out.artifacts.pop("relocated", None)
        out.artifacts.pop("filled", None)
        out.warnings.append(f"bundle {bundle.get('tag', '')} {why}; compiled here")
        self.log.optimize(stage.name, "progress", f"bundle not used: {why}", hint="bundle")
        return False

    def _push(self, stage: Stage, want: dict, out, beat) -> None:
        """Publish what this host compiled and verified (never a failed or partial cache)."""
        from .. import __version__
        from ..exec_bundles import BundleError, push
        from ..facts_registry import bundle_tag

        settings = self._bundles(stage)
        if settings is None or not settings["push"] or not self._files:
            return
        beat.set("push bundle")
        files = self._files
        if type(stage).bundle_keeps is not Stage.bundle_keeps:
            from ..facts_artifacts import collect

            files = collect(self.ctx.root, stage.artifact_dirs(), stage.bundle_keeps,
                            known={f["path"]: f for f in self._files})  # the manifest's files: hashed already
        tag = bundle_tag(stage.file_name, want)
        provenance = {"sglprep_version": __version__, "packages": dict(self.rt.packages),
                      "gpu": self.rt.gpus[0].name if self.rt.gpus else "",
                      "compute_capability": self.rt.gpus[0].compute_cap if self.rt.gpus else "",
                      "image": self.data["runtime"]["container"]["image"] if self.ctx.runtime_kind == "docker" else ""}
        if self.ctx.runtime_kind == "docker":  # the image the container runs, by content
            provenance["image_id"] = getattr(self.facts().container(self.data["runtime"]["container"]["name"]),
                                             "image_id", "")
        try:
            digest = push(self._registry(settings), settings["repository"], tag, self.ctx.root, stage.name, want,
                          files, provenance, stage.fills(out), stage.anchors(self))
        except (BundleError, OSError) as exc:
            out.warnings.append(f"bundle not pushed: {exc}")
            return
        out.artifacts["bundle"] = {"pushed": digest, "tag": tag, "files": len(files),
                                   "registry": settings["registry"], "repository": settings["repository"]}

    def _disk(self, stage: Stage):
        """Files and bytes in the stage's dirs (for files_delta, disk_delta_bytes)."""
        from ..facts_host import TreeStats, tree_stats

        total = TreeStats(0, 0, 0.0)
        for rel in stage.artifact_dirs():
            stats = tree_stats(self.path(rel))
            total = TreeStats(total.files + stats.files, total.bytes + stats.bytes,
                              max(total.newest_mtime, stats.newest_mtime))
        return total

    def _remove_damaged(self, stage: Stage, damaged: list) -> list:
        """Remove what priming must rebuild (a damaged .so left in place looks
        built to ninja), as the owner, never outside the stage's own dirs."""
        import shutil

        removed = []
        allowed = tuple(d.rstrip("/") + "/" for d in stage.artifact_dirs())
        for rel in stage.repair_targets(tuple(damaged)):
            if not rel.startswith(allowed) or ".." in rel.split("/"):
                raise StageFailed("artifact_damaged", f"refusing to repair {rel}: outside {', '.join(allowed)}")
            path = self.path(rel)
            with self.owner():
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.unlink(path)
            removed.append(rel)
        self.log.optimize(stage.name, "progress", f"repair: removed {len(removed)} damaged artifact(s)",
                          removed=removed)
        return removed

    def _write_manifest(self, stage: Stage, out) -> None:
        """What the stage produced, proven whole: written before the signature,
        so a signature always has its manifest."""
        from ..facts_artifacts import collect

        from . import catalog

        filled = [catalog.caches()[name][0] for name in stage.fills(out) if name in catalog.caches()]
        files = collect(self.ctx.root, tuple(dict.fromkeys((*stage.artifact_dirs(), *filled))), stage.keeps)
        self._files = files
        path = self.path(stage.manifest_rel(self.slug))
        with self.owner():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_json(path, {"schema_version": "1", "stage": stage.name, "written_at": utc_now_iso(),
                                     "run_id": self.run_id, "files": files})
        out.artifacts["manifest"] = {"host_path": path, "files": len(files),
                                     "bytes": sum(f["size"] for f in files)}

    def _write_signature(self, stage: Stage, want: dict, fills: list) -> None:
        path = self.path(stage.signature_rel(self.slug))
        doc = {"schema_version": "1", "stage": stage.name, "signature": want, "written_at": utc_now_iso(),
               "run_id": self.run_id}
        if fills:
            doc["fills"] = fills
        with self.owner():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_json(path, doc)

    def _preflight(self, stage: Stage) -> None:
        from .plan import linked_dir

        link = linked_dir(self.facts(), self.ctx, stage.cache_dir)
        if link:
            raise StageFailed("permissions_unexpected", link)
        cache_dir_path = self.path(stage.cache_dir)
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
        if stage.starts_server:
            port = self.facts().port(self.data["server"]["port"])
            if port.state == "busy":
                holder = f"pid {port.pid} ({' '.join(port.cmdline)[:100]})" if port.pid else "an unknown process"
                raise StageFailed("port_busy", f"port {port.port} is busy, held by {holder}; no fallback ports",
                                  pid=port.pid, cmdline=list(port.cmdline))

    # ------------------------------------------------------------ telemetry
    def _selector(self) -> str:
        """The series of this host's warm-up server: the labels sglprep's
        prometheus.yml puts on the sglang job (host, model)."""
        return (f'{{job="sglang",host="{_promq(self.desired.host)}",model="{_promq(self.slug)}"}}')

    def _prometheus_value(self) -> tuple[float | None, str]:
        """(prompt tokens Prometheus has for this server now, why not)."""
        if not self.data["telemetry"]["probe"]:
            return None, ""
        _, value, error = prometheus_samples(self.data["telemetry"]["prometheus_url"],
                                             f"sum({PROMPT_TOKENS}{self._selector()})")
        return value, error

    def _telemetry_probe(self, before: tuple) -> dict:
        """Wait until Prometheus has scraped the request (its prompt tokens of
        this host's sglang series went up) and the target is up, within three
        scrape intervals; give up at once when Prometheus does not answer."""
        url = self.data["telemetry"]["prometheus_url"]
        value_before, down = before
        query = f"sum({PROMPT_TOKENS}{self._selector()})"
        up_query = f"up{self._selector()}"
        if down and value_before is None and ("Connect" in down or "refused" in down or url in down):
            return {"ok": False, "sample_count": 0, "prometheus_query": query, "before": None, "after": None,
                    "error": f"Prometheus not reachable: {down}"}
        _, up, _ = prometheus_samples(url, up_query)
        deadline = time.monotonic() + 3 * self.data["telemetry"]["scrape_interval_s"] + 5
        count, value, error = 0, None, ""
        while time.monotonic() < deadline:
            count, value, error = prometheus_samples(url, query)
            if error and value is None and not count:
                break
            if value is not None and value > (value_before or 0):
                if up != 1:
                    _, up, _ = prometheus_samples(url, up_query)
                return {"ok": up == 1, "sample_count": count, "prometheus_query": query, "up_query": up_query,
                        "up": up == 1, "before": value_before, "after": value,
                        **({} if up == 1 else {"error": "the sglang target is not up in Prometheus"})}
            time.sleep(0.5)
        return {"ok": False, "sample_count": count, "prometheus_query": query, "up_query": up_query, "up": up == 1,
                "before": value_before, "after": value,
                "error": error or "Prometheus did not see the request's prompt tokens"}


def _promq(value: str) -> str:
    """A label value inside a PromQL string."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"')
