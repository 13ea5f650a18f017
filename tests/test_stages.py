"""Cache stages end to end with the local runtime: the SGLang test double as
real processes, a real storage root, a real Prometheus for the telemetry probe."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from runtime_fixture import make_runtime, runtime_python

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
IS_ROOT = os.geteuid() == 0
OWNER = (4242, 4242) if IS_ROOT else (os.getuid(), os.getgid())

DENSE = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 131072,
         "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
         "num_hidden_layers": 2, "vocab_size": 32000, "torch_dtype": "bfloat16"}
MOE = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "max_position_embeddings": 32768,
       "hidden_size": 2048, "moe_intermediate_size": 768, "num_experts": 128, "num_attention_heads": 32,
       "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 151936, "torch_dtype": "bfloat16",
       "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Rig:
    """A host with a storage root, a model, a fake runtime and a state file."""

    def __init__(self, base: Path, model_config: dict):
        self.base = base
        self.root = base / "host" / "root"
        (base / "host").mkdir()
        if IS_ROOT:
            os.chown(base / "host", *OWNER)
        self.model = base / "models" / "demo-model"
        self.model.mkdir(parents=True)
        (self.model / "config.json").write_text(json.dumps(model_config))
        self.launch_log = base / "launches.jsonl"
        self.launch_log.touch()
        self.launch_log.chmod(0o666)
        self.env = make_runtime(base / "rt")
        self.env["FAKE_SGLANG_LAUNCH_LOG"] = str(self.launch_log)
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755) if p != base / "host" else None
        self.port = free_port()
        self.state = {
            "version": 1,
            "storage": {"root": str(self.root), **({"owner": f"{OWNER[0]}:{OWNER[1]}"} if IS_ROOT else {})},
            "runtime": {"kind": "local", "python": runtime_python(), "env": self.env},
            "model": {"path": str(self.model)},
            "server": {"port": self.port, "settings": {"kv_cache_dtype": "fp8_e4m3"}},
            "caches": {"deep_gemm": "ensure", "moe_tune": "skip",
                       "flashinfer": {"mode": "ensure", "attention_backend": "flashinfer"},
                       "inductor": "ensure"},
            "telemetry": {"probe": False, "scrape_interval_s": 1},
            "timeouts": {"lock_s": 2, "readiness_s": 30, "stage_s": 60, "teardown_s": 3},
            "heartbeat_s": 0.3,
        }
        self.write()

    def write(self, **overrides) -> None:
        self.state = deep_merge(self.state, overrides)
        (self.base / "s.yaml").write_text(yaml.safe_dump(self.state, sort_keys=False))

    def run(self, *args, env=None, timeout=180):
        full_env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
        full_env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-m", "reconcile", "-f", "s.yaml", *args], cwd=self.base,
                              env=full_env, capture_output=True, text=True, timeout=timeout)

    def launches(self) -> list:
        return [json.loads(ln) for ln in self.launch_log.read_text().splitlines() if ln.strip()]

    def prep_result(self, proc) -> tuple[Path, dict]:
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT_JSON "))
        path = Path(line.split(" ", 1)[1])
        return path, json.loads(path.read_text())

    def stage_action(self, plan_doc: dict, stage: str) -> tuple[str, str]:
        change = next(c for c in plan_doc["changes"] if c["address"] == f"stage:{stage}")
        return change["action"], change["message"]


@pytest.fixture
def rig():
    base = Path(tempfile.mkdtemp(prefix="sglprep-stages-"))
    base.chmod(0o755)
    r = Rig(base, DENSE)
    yield r
    for launch in r.launches():  # never leave a server behind
        try:
            os.killpg(launch.get("pgid") or launch["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError, KeyError):
            pass
    shutil.rmtree(base, ignore_errors=True)


def test_first_apply_primes_every_ensured_stage_second_is_noop(rig):
    plan = rig.run("plan", "--json", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stderr
    doc = json.loads(plan.stdout)
    assert rig.stage_action(doc, "deep_gemm") == ("run", "never primed (no signature.json)")
    assert rig.stage_action(doc, "moe_tune")[0] == "noop"

    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out_lines = proc.stdout.rstrip("\n").splitlines()
    assert out_lines[-2].startswith("RESULT_JSON ")
    assert out_lines[-1] == "RESULT_STATUS ok deep_gemm:ok moe_tune:skipped flashinfer:ok inductor:ok"
    modules = [launch["module"] for launch in rig.launches()]
    assert modules == ["sglang.compile_deep_gemm", "sglang.launch_server", "sglang.launch_server"]

    path, result = rig.prep_result(proc)
    assert result["schema_version"] == "1" and result["status"] == "ok"
    run = result["run"]
    assert run["device_name"] == "NVIDIA H100 80GB HBM3" and run["compute_capability"] == "sm_90"
    assert (run["torch_version"], run["sglang_version"], run["cuda"]) == ("2.9.1", "0.5.23", "12.8")
    env = run["settings"]["env"]
    assert env["FLASHINFER_WORKSPACE_BASE"] == str(rig.root / "profiles/flashinfer")
    assert env["SGLANG_DG_CACHE_DIR"] == str(rig.root / "profiles/deep_gemm")
    assert "SGLANG_MOE_CONFIG_DIR" not in env  # no tuned configs yet
    assert run["settings"]["warmup_port"] == rig.port
    for stage in ("deep_gemm", "moe_tune", "flashinfer", "inductor"):
        stage_file = path.parent / "stages" / f"{stage}.json"
        assert stage_file.stat().st_mtime_ns <= path.stat().st_mtime_ns, "stage JSON must precede the aggregate"
        assert json.loads(stage_file.read_text()) == result["stages"][stage]
    fi = result["stages"]["flashinfer"]
    assert fi["status"] == "ok" and fi["ran"] and fi["status_code"] == 0
    for stage in ("deep_gemm", "flashinfer", "inductor"):
        arts = result["stages"][stage]["artifacts"]
        assert arts["files_delta"] > 0 and arts["disk_delta_bytes"] > 0, stage
    assert fi["artifacts"]["warmup_pid"] == rig.launches()[1]["pid"]
    assert fi["artifacts"]["cleanup"]["killed"] is True
    assert fi["artifacts"]["metrics_delta"] == {"sglang:prompt_tokens_total": 4.0}
    assert "--enable-metrics" in fi["artifacts"]["argv"] and "--attention-backend" in fi["artifacts"]["argv"]
    ind = result["stages"]["inductor"]
    assert "--enable-torch-compile" in ind["artifacts"]["argv"] and ind["artifacts"]["files"]["files_delta"] > 0
    dg = result["stages"]["deep_gemm"]
    assert "--enable-metrics" not in dg["artifacts"]["argv"] and "false" not in dg["artifacts"]["argv"]
    assert Path(dg["artifacts"]["compile_log"]["host_path"]).read_text().count("KV Cache is allocated") >= 1
    for stage, cache in (("deep_gemm", "deep_gemm"), ("flashinfer", "flashinfer"), ("inductor", "torchinductor")):
        sig = json.loads((rig.root / f"profiles/{cache}/demo-model/signature.json").read_text())
        assert sig["stage"] == stage and sig["signature"] == result["stages"][stage]["signature"]
    assert os.listdir(rig.root / "profiles/.in_progress") == []
    assert [n for n in os.listdir(rig.root / "profiles/.locks")] == []
    if IS_ROOT:  # everything the stages wrote belongs to the storage owner
        strays = [str(p) for p in rig.root.rglob("*") if (p.lstat().st_uid, p.lstat().st_gid) != OWNER]
        assert strays == []
    log = Path(next(ln.split(": ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("Session log: ")))
    text = log.read_text()
    assert "[OPTIMIZE deep_gemm] starting" in text and '"phase": "end", ' in text
    assert "KV Cache is allocated. dtype: torch.float8_e4m3fn" in text

    # second apply: everything noop, no process started
    before = len(rig.launches())
    plan = rig.run("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout
    assert re.search(r"= stage\s+flashinfer\s+noop: valid_signature", plan.stdout)
    proc = rig.run("apply")
    assert proc.returncode == 0 and "Apply complete: nothing to do." in proc.stdout
    assert len(rig.launches()) == before
    # a converged apply still ends with the RESULT lines, pointing at the last prep result
    assert proc.stdout.splitlines()[-2] == f"RESULT_JSON {path}"
    assert proc.stdout.splitlines()[-1] == "RESULT_STATUS ok deep_gemm:noop moe_tune:skipped flashinfer:noop inductor:noop"


def test_changing_one_setting_reruns_exactly_the_stages_that_hold_it(rig):
    assert rig.run("apply").returncode == 0
    before = len(rig.launches())
    rig.write(server={"settings": {"chunked_prefill_size": 8192}})
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert rig.stage_action(doc, "deep_gemm") == ("run", "signature chunked_prefill_size 4096 → 8192")
    assert rig.stage_action(doc, "inductor") == ("run", "signature chunked_prefill_size 4096 → 8192")
    assert rig.stage_action(doc, "flashinfer") == ("noop", "valid_signature")
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "RESULT_STATUS ok deep_gemm:ok moe_tune:skipped flashinfer:noop inductor:ok"
    started = rig.launches()[before:]
    assert [l["module"] for l in started] == ["sglang.compile_deep_gemm", "sglang.launch_server"]
    assert all("--chunked-prefill-size" in l["argv"] and "8192" in l["argv"] for l in started)

    # a runtime fact in the signature: a torch upgrade reruns every primed stage and says so
    rig.env.update(make_runtime(rig.base / "rt", versions={"torch": "2.10.0"}))
    rig.write()
    doc = json.loads(rig.run("plan", "--json").stdout)
    for stage in ("deep_gemm", "flashinfer", "inductor"):
        assert rig.stage_action(doc, stage) == ("run", "signature torch_version 2.9.1 → 2.10.0")


def test_rebuild_runs_although_valid(rig):
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip"})
    assert rig.run("apply").returncode == 0
    rig.write(caches={"inductor": "rebuild"})
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert rig.stage_action(doc, "inductor") == ("run", "rebuild requested (caches.inductor: rebuild)")
    before = len(rig.launches())
    assert rig.run("apply").returncode == 0
    assert [l["module"] for l in rig.launches()[before:]] == ["sglang.launch_server"]


def test_failing_stage_exit_code_marker_and_independent_stages_still_run(rig):
    rig.write(caches={"deep_gemm": {"mode": "ensure", "env": {"FAKE_SGLANG_FAIL": "oom"}}})
    proc = rig.run("apply")
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == \
        "RESULT_STATUS partial deep_gemm:error moe_tune:skipped flashinfer:ok inductor:ok"
    path, result = rig.prep_result(proc)
    dg = json.loads((path.parent / "stages/deep_gemm.json").read_text())
    assert (dg["status"], dg["status_code"], dg["error_type"]) == ("error", 10, "oom_during_warmup")
    assert "Not enough memory. Please try to increase --mem-fraction-static" in dg["errors"][0]["message"]
    assert dg["errors"][0]["compile_log_tail"]
    assert result["errors"][0]["stage"] == "deep_gemm"
    marker = json.loads((rig.root / "profiles/.in_progress/deep_gemm.json").read_text())
    assert set(marker) >= {"owner_pid", "started_at"}
    assert not (rig.root / "profiles/deep_gemm/demo-model/signature.json").exists()
    doc = json.loads(rig.run("plan", "--json").stdout)
    action, message = rig.stage_action(doc, "deep_gemm")
    assert action == "run" and message.startswith("partial cache: an earlier run was interrupted")


@pytest.mark.parametrize("fail, env, error_type", [
    ("exit_early", {}, "server_exited"),
    ("hang_before_ready", {}, "readiness_timeout"),
    ("wrong_kv_dtype", {}, "settings_mismatch"),
    ("generate_500", {}, "generate_failed"),
])
def test_warmup_failure_modes(rig, fail, env, error_type):
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip",
                      "flashinfer": {"mode": "ensure", "env": {"FAKE_SGLANG_FAIL": fail, **env}}},
              timeouts={"readiness_s": 2})
    proc = rig.run("apply")
    assert proc.returncode == 12, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    fi = result["stages"]["flashinfer"]
    assert (fi["status"], fi["error_type"]) == ("error", error_type)
    # whatever failed, the server is gone afterwards
    for launch in rig.launches():
        with pytest.raises(ProcessLookupError):
            os.kill(launch["pid"], 0)


def test_server_ignoring_sigterm_is_killed_and_confirmed_gone(rig):
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip",
                      "flashinfer": {"mode": "ensure", "env": {"FAKE_SGLANG_FAIL": "ignore_sigterm"}}},
              timeouts={"teardown_s": 1})
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    cleanup = result["stages"]["flashinfer"]["artifacts"]["cleanup"]
    assert cleanup["killed"] and cleanup["detail"] == "SIGTERM, SIGKILL after 1s"
    for launch in rig.launches():
        with pytest.raises(ProcessLookupError):
            os.kill(launch["pid"], 0)


def test_busy_port_blocks_warmups_and_names_the_holder(rig):
    with socket.socket() as s:
        s.bind(("127.0.0.1", rig.port))
        s.listen()
        proc = rig.run("plan", "--detailed-exitcode")
        assert proc.returncode == 1
        assert re.search(rf"! port\s+{rig.port}\s+blocked: port_busy: held by pid {os.getpid()}", proc.stdout)
        proc = rig.run("apply")
        # the seeds' outcome: each server stage fails port_busy, the run exits with the first one's code
        assert proc.returncode == 10, proc.stdout
        assert rig.launches() == []
        assert re.search(rf"failed\s+stage:flashinfer\s+port:{rig.port}: blocked: port_busy: held by pid", proc.stdout)
        assert proc.stdout.splitlines()[-1] == ("RESULT_STATUS error deep_gemm:error moe_tune:skipped "
                                                "flashinfer:error inductor:error")
        _, result = rig.prep_result(proc)
        assert {result["stages"][s]["error_type"] for s in ("deep_gemm", "flashinfer", "inductor")} == {"port_busy"}
        assert result["stages"]["deep_gemm"]["status_code"] == 10


def test_low_disk_found_by_plan_is_the_stages_insufficient_disk(rig):
    rig.write(storage={"min_free_gib": 1e9}, caches={"flashinfer": "skip", "inductor": "skip"})
    proc = rig.run("apply")
    assert proc.returncode == 10, proc.stdout
    _, result = rig.prep_result(proc)
    assert result["stages"]["deep_gemm"]["error_type"] == "insufficient_disk"
    assert "free space there or lower storage.min_free_gib" in result["stages"]["deep_gemm"]["errors"][0]["message"]


def test_a_log_without_the_kv_dtype_line_is_no_pass(rig):
    """With --log-level warning the KV cache line is not logged: a warm-up
    server proves the dtype through /server_info; compile_deep_gemm, which
    has no /server_info, fails verify_log_missing instead of passing."""
    rig.write(server={"extra_args": ["--log-level", "warning"]}, caches={"inductor": "skip"})
    proc = rig.run("apply")
    assert proc.returncode == 10, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    assert result["stages"]["deep_gemm"]["error_type"] == "verify_log_missing"
    fi = result["stages"]["flashinfer"]
    assert fi["status"] == "ok", fi["errors"]
    assert fi["artifacts"]["kv_dtype_checked"] == {"via": "/server_info",
                                                                            "dtype": "torch.float8_e4m3fn"}


def test_flags_the_installed_sglang_rejects_block_before_any_launch(rig):
    rig.write(server={"settings": {"cuda_graph_max_bs": 8}})
    proc = rig.run("plan")
    assert proc.returncode == 1
    assert ("blocked: sglang 0.5.23 rejects the deep_gemm server flags: sglang serve: error: ambiguous option: "
            "--cuda-graph-max-bs could match --cuda-graph-max-bs-decode, --cuda-graph-max-bs-prefill") in proc.stdout
    assert rig.run("apply").returncode == 1
    assert rig.launches() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus": []}, "no GPU visible in the runtime (NVIDIA-SMI has failed: no devices)"),
    ({"with_sglang": False}, "sglang is not installed in runtime python"),
])
def test_no_gpu_or_no_sglang_blocks_stages_without_crashing(rig, kwargs, message):
    rig.env.update(make_runtime(rig.base / "rt", **kwargs))
    rig.write()
    proc = rig.run("plan")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"! check\s+runtime\s+blocked: " + re.escape(message), proc.stdout), proc.stdout
    assert re.search(r"! stage\s+deep_gemm\s+blocked: ", proc.stdout)


def test_tp_larger_than_gpu_count_is_blocked(rig):
    rig.write(tp=2)
    proc = rig.run("plan")
    assert "blocked: tp 2 needs 2 GPUs; the runtime sees 1 → set tp: 1" in proc.stdout


def test_context_longer_than_the_model_is_blocked(rig):
    rig.write(server={"settings": {"context_length": 262144}})
    proc = rig.run("plan")
    assert ("blocked: server.settings.context_length 262144 exceeds the model's max_position_embeddings 131072"
            in proc.stdout)


def test_stale_stage_lock_is_reclaimed_and_live_one_times_out(rig):
    assert rig.run("apply", "--only", "directory:profiles/.locks").returncode == 0
    lock = rig.root / "profiles/.locks/inductor.lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"owner_pid": dead.pid, "started_at": "2026-11-22T00:00:00Z",
                                "host": os.uname().nodename, "command": "x"}))
    if IS_ROOT:
        os.chown(lock, *OWNER)
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip"})
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not lock.exists()

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        lock.write_text(json.dumps({"owner_pid": holder.pid, "started_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": os.uname().nodename, "command": "x"}))
        if IS_ROOT:
            os.chown(lock, *OWNER)
        rig.write(caches={"inductor": "rebuild"})
        proc = rig.run("apply")
        assert proc.returncode == 13, proc.stdout + proc.stderr
        _, result = rig.prep_result(proc)
        ind = result["stages"]["inductor"]
        assert ind["error_type"] == "lock_timeout" and ind["errors"][0]["owner_pid"] == holder.pid
        log = Path(next(ln.split(": ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("Session log: ")))
        assert '"phase": "wait_lock"' in log.read_text()
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_during_a_stage_leaves_a_marker_that_reruns_it(rig):
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip",
                      "inductor": {"mode": "ensure", "env": {"FAKE_SGLANG_LOAD_S": "30"}}})
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
    apply = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", "s.yaml", "apply"], cwd=rig.base, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = rig.root / "profiles/.in_progress/inductor.json"
    deadline = time.time() + 30
    while time.time() < deadline and not (marker.exists() and rig.launches()):
        time.sleep(0.1)
    assert marker.exists()
    recorded = json.loads(marker.read_text())["processes"]
    assert [p["pid"] for p in recorded] == [rig.launches()[0]["pid"]]
    apply.send_signal(signal.SIGKILL)
    apply.wait()
    orphan = rig.launches()[0]
    os.killpg(orphan["pgid"], 0)  # the warm-up server outlived its apply
    rig.write(caches={"inductor": {"mode": "ensure", "env": {"FAKE_SGLANG_LOAD_S": "0.1"}}})
    doc = json.loads(rig.run("plan", "--json").stdout)
    action, message = rig.stage_action(doc, "inductor")
    assert action == "run" and message.startswith("partial cache: an earlier run was interrupted (pid ")
    marker_change = next(c for c in doc["changes"] if c["address"] == "marker:inductor")
    assert marker_change["reason"] == "partial"
    orphans = next(c for c in doc["changes"] if c["address"] == "orphans:inductor")
    assert orphans["action"] == "delete" and f"stop pid {orphan['pid']}" in orphans["message"]
    stage = next(c for c in doc["changes"] if c["address"] == "stage:inductor")
    assert "orphans:inductor" in stage["depends_on"]
    proc = rig.run("apply")  # stops the orphan, then primes on the freed port
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from reconcile.exec_runtime import _group_alive

    assert not _group_alive(orphan["pgid"]), "the orphan's group still runs (zombies aside)"
    assert not marker.exists()
    from conftest import record

    record("kill -9 mid warm-up → orphan reaped, stage resumed", 1, 1)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_apply_tears_down_records_interrupted_and_exits_128_plus_signal(rig, sig, code):
    rig.write(caches={"deep_gemm": "ensure", "flashinfer": "skip",
                      "inductor": {"mode": "ensure", "env": {"FAKE_SGLANG_LOAD_S": "30"}}})
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
    apply = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", "s.yaml", "apply"], cwd=rig.base, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = rig.root / "profiles/.in_progress/inductor.json"
    deadline = time.time() + 30
    while time.time() < deadline and not (marker.exists() and len(rig.launches()) == 2):
        time.sleep(0.05)
    assert marker.exists()
    apply.send_signal(sig)
    out, err = apply.communicate(timeout=60)
    assert apply.returncode == code, out + err
    lines = out.rstrip("\n").splitlines()
    assert lines[-2].startswith("RESULT_JSON ")
    assert lines[-1] == "RESULT_STATUS partial deep_gemm:ok moe_tune:skipped flashinfer:skipped inductor:error"
    result = json.loads(Path(lines[-2].split(" ", 1)[1]).read_text())
    assert result["status"] == "partial"
    inductor = result["stages"]["inductor"]
    assert inductor["status"] == "error" and inductor["error_type"] == "interrupted"
    assert inductor["errors"][0]["signal"] == signal.Signals(sig).name
    assert f"Apply interrupted by {signal.Signals(sig).name}" in out
    server = rig.launches()[-1]
    with pytest.raises(ProcessLookupError):  # the warm-up server's whole group is gone
        os.killpg(server["pgid"], 0)
    assert marker.exists(), "an interrupted stage keeps its marker: partial cache"
    assert not (rig.root / "profiles/.locks/inductor.lock").exists()
    assert not (rig.root / "profiles/.locks/apply.lock").exists()
    rig.write(caches={"inductor": {"mode": "ensure", "env": {"FAKE_SGLANG_LOAD_S": "0.1"}}})
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert rig.stage_action(doc, "inductor")[0] == "run"
    assert rig.stage_action(doc, "deep_gemm") == ("noop", "valid_signature")
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists()
    from conftest import record

    record("SIGINT/SIGTERM mid-stage → interrupted, torn down, RESULT lines", 1, 1)


def test_a_stage_that_was_not_executed_is_never_reported_noop(rig):
    """--only leaves deep_gemm unprimed: prep_result must not call it noop or ok."""
    proc = rig.run("apply", "--only", "stage:inductor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == ("RESULT_STATUS partial deep_gemm:skipped moe_tune:skipped "
                                            "flashinfer:skipped inductor:ok")
    _, result = rig.prep_result(proc)
    assert result["stages"]["deep_gemm"]["errors"][0]["error_type"] == "not_run"
    assert result["stages"]["moe_tune"]["errors"] == []  # skipped by the state: fine


def test_a_blocked_stage_is_an_error_and_never_runs(rig):
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip", "moe_tune": "ensure"})
    proc = rig.run("apply")
    assert proc.returncode == 11, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].endswith("moe_tune:error flashinfer:skipped inductor:skipped")
    _, result = rig.prep_result(proc)
    moe = result["stages"]["moe_tune"]
    assert moe["error_type"] == "invalid_options" and "caches.moe_tune.script is not set" in moe["errors"][0]["message"]
    assert rig.launches() == []


def test_a_damaged_artifact_is_named_by_plan_and_repaired_by_apply(rig):
    """A primed .so cut to 0 bytes (a disk-full or killed copy) must not pass
    as warm: plan names the file, apply rebuilds exactly that module."""
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"})
    assert rig.run("apply").returncode == 0
    assert rig.run("plan", "--detailed-exitcode").returncode == 0
    sos = sorted((rig.root / "profiles/flashinfer").rglob("*.so"))
    assert len(sos) == 2
    victim, other = sos
    size, other_stat = victim.stat().st_size, other.stat()
    victim.write_bytes(b"")
    plan = rig.run("plan", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stdout
    rel = str(victim.relative_to(rig.root))
    assert f"artifact damaged: {rel} is 0 bytes, was {size:,} bytes" in plan.stdout
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    assert result["stages"]["flashinfer"]["artifacts"]["repaired"] == [str(Path(rel).parent)]
    assert victim.stat().st_size == size
    assert other.stat().st_mtime_ns == other_stat.st_mtime_ns, "the intact module was not rebuilt"
    assert rig.run("plan", "--detailed-exitcode").returncode == 0


def test_same_size_corruption_is_caught_by_verify_and_apply(rig):
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"})
    assert rig.run("apply").returncode == 0
    victim = sorted((rig.root / "profiles/flashinfer").rglob("*.so"))[0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as primed: only a hash sees it
    assert rig.run("plan", "--detailed-exitcode").returncode == 0  # the fast path trusts size and mtime
    plan = rig.run("plan", "--verify", "--detailed-exitcode")
    assert plan.returncode == 2 and "changed since it was primed (sha256 differs)" in plan.stdout
    proc = rig.run("apply")  # apply re-hashes, so it repairs without being told
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "flashinfer:ok" in proc.stdout.splitlines()[-1]
    assert rig.run("plan", "--verify", "--detailed-exitcode").returncode == 0


def test_a_cache_primed_without_a_manifest_is_primed_again(rig):
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip"})
    assert rig.run("apply").returncode == 0
    (rig.root / "profiles/torchinductor/demo-model/manifest.json").unlink()
    doc = json.loads(rig.run("plan", "--json").stdout)
    action, message = rig.stage_action(doc, "inductor")
    assert action == "run" and message.startswith("no artifact manifest to prove the cache whole")


def test_a_parser_that_cannot_run_is_not_called_a_flag_problem(rig):
    """The runtime cannot run SGLang's parser (its HOME is not writable): the
    plan blocks on that cause and does not tell the user to change flags."""
    rig.env["HOME"] = "/proc/sglprep-no-home"
    rig.write(runtime={"env": rig.env})
    proc = rig.run("plan")
    assert proc.returncode == 1
    line = next(ln for ln in proc.stdout.splitlines() if "server_flags" in ln)
    assert "could not run sglang 0.5.23's argument parser in the runtime" in line
    assert "No such file or directory" in line or "Permission denied" in line or "Errno" in line
    assert "fix server.settings" not in line and "the flags were not judged" in line


def test_the_flag_check_runs_as_the_owner_with_the_owner_home(rig):
    """As root, the parser runs as the storage owner with the owner's HOME,
    never root's (whose ~/.cache the owner cannot write), and root's other
    variables do not reach it."""
    proc = rig.run("plan", env={"HOME": "/root", "AWS_SECRET_ACCESS_KEY": "root-only"})
    assert proc.returncode == 0, proc.stdout
    assert "server_flags" not in proc.stdout  # accepted: an ok check is not printed


def test_heartbeats_while_a_stage_runs(rig):
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip",
                      "inductor": {"mode": "ensure", "env": {"FAKE_SGLANG_LOAD_S": "1.5"}}}, heartbeat_s=0.3)
    proc = rig.run("apply")
    assert proc.returncode == 0
    log = Path(next(ln.split(": ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("Session log: ")))
    progress = [json.loads(ln.split(" ", 1)[1]) for ln in log.read_text().splitlines()
                if ln.startswith("OPTIMIZE_JSON ") and '"phase": "progress"' in ln]
    assert len(progress) >= 3
    assert {p["name"] for p in progress} == {"inductor"} and "elapsed_s" in progress[0]


def test_verify_records_evidence(rig):
    rig.write(caches={"deep_gemm": "skip",
                      "flashinfer": {"mode": "ensure", "attention_backend": "flashinfer", "verify": True},
                      "inductor": {"mode": "ensure", "verify": True}})
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    fi = result["stages"]["flashinfer"]["evidence"]
    assert fi["ok"] and len(fi["modules"]) == 2
    assert all(m["has_so"] and m["names_own_dir"] and m["ninja"] == "clean" for m in fi["modules"])
    ind = result["stages"]["inductor"]["evidence"]
    assert ind["ok"] and ind["method"] == "restart with SGLANG_CRASH_ON_JIT_COMPILE=1"
    crash_on_jit = [l["env"].get("SGLANG_CRASH_ON_JIT_COMPILE") for l in rig.launches()]
    assert crash_on_jit == [None, None, "1"]  # flashinfer warm-up, inductor warm-up, inductor's verify restart


def test_deep_gemm_verify_restarts_a_plain_server_that_must_compile_nothing(rig):
    rig.write(caches={"deep_gemm": {"mode": "ensure", "verify": True}, "flashinfer": "skip", "inductor": "skip"})
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    evidence = result["stages"]["deep_gemm"]["evidence"]
    assert evidence["ok"] and evidence["method"] == "restart with SGLANG_CRASH_ON_JIT_COMPILE=1"
    compile_run, restart = rig.launches()
    assert compile_run["module"] == "sglang.compile_deep_gemm"
    assert restart["module"] == "sglang.launch_server" and restart["env"]["SGLANG_CRASH_ON_JIT_COMPILE"] == "1"
    assert "--timeout" not in restart["argv"] and "--watchdog-timeout" in restart["argv"]


def test_touched_flashinfer_sources_predict_a_rebuild_before_gpu_time(rig):
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"})
    assert rig.run("apply").returncode == 0
    assert rig.run("plan", "--detailed-exitcode").returncode == 0
    data = Path(rig.env["FAKE_FLASHINFER_DATA_DIR"])
    future = time.time() + 60
    for p in data.rglob("*"):
        os.utime(p, (future, future))
    before = len(rig.launches())
    doc = json.loads(rig.run("plan", "--json").stdout)
    action, message = rig.stage_action(doc, "flashinfer")
    assert action == "run" and message.startswith("sources newer than the build: ninja has work in 2 module(s)")
    assert len(rig.launches()) == before  # the prediction started no server


def test_moved_flashinfer_cache_is_named(rig):
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"})
    assert rig.run("apply").returncode == 0
    old_root = rig.root
    new_base = rig.base / "host2"
    new_base.mkdir()
    if IS_ROOT:
        os.chown(new_base, *OWNER)
    shutil.copytree(old_root, new_base / "root", symlinks=True, copy_function=shutil.copy2)
    if IS_ROOT:
        for p in [new_base / "root", *(new_base / "root").rglob("*")]:
            os.lchown(p, *OWNER)
    rig.write(storage={"root": str(new_base / "root")})
    doc = json.loads(rig.run("plan", "--json").stdout)
    action, message = rig.stage_action(doc, "flashinfer")
    assert action == "run"
    assert message.startswith(f"cache moved from {old_root}/profiles/flashinfer/.cache/flashinfer/0.7.2.post1/90a/"
                              "cached_ops: FlashInfer would rebuild 2 module(s)")


def test_moe_tune_writes_configs_and_verifies_they_are_used(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="sglprep-moe-"))
    base.chmod(0o755)
    rig = Rig(base, MOE)
    try:
        tuner = base / "tuning_fused_moe_triton.py"
        shutil.copy(TESTS / "fake_tuner.py", tuner)
        tuner.chmod(0o644)
        rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip",
                          "moe_tune": {"mode": "ensure", "script": str(tuner), "batch_sizes": [1, 64]}})
        proc = rig.run("apply")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _, result = rig.prep_result(proc)
        moe = result["stages"]["moe_tune"]
        assert moe["artifacts"]["verified_in_log"] is True
        [(name, info)] = moe["artifacts"]["config_files"].items()
        assert name == "E=128,N=768,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128, 128].json"
        tuned = json.loads(Path(info["host_path"]).read_text())
        assert sorted(tuned) == ["1", "64"]  # one tuner run per batch size, merged
        assert Path(info["host_path"]).parent.name == "triton_3_6_0"
        assert [r["batch_size"] for r in moe["artifacts"]["tuner_runs"]] == [1, 64]
        tuner = moe["artifacts"]["tuner"]
        assert tuner["script_sha256"].startswith("sha256:") and tuner["sglang_version"] == "0.5.23"
        assert tuner["inputs"]["batch_sizes"] == [1, 64] and tuner["inputs"]["tp"] == 1
        assert moe["artifacts"]["files_delta"] > 0 and moe["artifacts"]["disk_delta_bytes"] > 0
        assert isinstance(moe["artifacts"]["warmup_pid"], int)
        # later warm-ups route SGLANG_MOE_CONFIG_DIR to the tuned tree
        rig.write(caches={"inductor": "ensure"})
        proc = rig.run("apply")
        assert proc.returncode == 0, proc.stdout
        _, result = rig.prep_result(proc)
        assert result["run"]["settings"]["env"]["SGLANG_MOE_CONFIG_DIR"] == str(rig.root / "profiles/moe_configs")

        rig.write(caches={"moe_tune": {"mode": "rebuild", "env": {"FAKE_TUNER_FAIL": "1"}}})
        proc = rig.run("apply")
        assert proc.returncode == 11
        _, result = rig.prep_result(proc)
        assert result["stages"]["moe_tune"]["error_type"] == "tuner_execution_error"
    finally:
        for launch in rig.launches():
            try:
                os.killpg(launch["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def test_moe_tune_without_script_is_blocked(rig):
    rig.write(caches={"moe_tune": "ensure"})
    proc = rig.run("plan")
    assert re.search(r"! stage\s+moe_tune\s+blocked: caches.moe_tune.script is not set", proc.stdout)


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"), reason="prometheus not installed")
def test_telemetry_probe_through_a_real_prometheus(rig):
    prom_port = free_port()
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"},
              telemetry={"probe": True, "prometheus_url": f"http://127.0.0.1:{prom_port}", "scrape_interval_s": 1})
    render = rig.run("render", "prometheus.yml")
    assert render.returncode == 0
    config = rig.base / "prometheus.yml"
    config.write_text(render.stdout)
    tsdb = rig.base / "tsdb"
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{prom_port}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        proc = rig.run("apply")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _, result = rig.prep_result(proc)
        probe = result["stages"]["flashinfer"]["telemetry_probe"]
        assert probe["ok"] is True and probe["sample_count"] >= 1, probe
        assert probe["after"] > (probe["before"] or 0)
        assert result["telemetry_probe"]["ok"] is True
        assert result["telemetry_probe"]["prometheus_query"] == \
            'sum(sglang:prompt_tokens_total{job="sglang",host="localhost",model="demo-model"})'
        assert probe["up"] is True and probe["up_query"] == 'up{job="sglang",host="localhost",model="demo-model"}'
    finally:
        prom.terminate()
        prom.wait(10)


def test_telemetry_probe_gives_up_at_once_when_prometheus_is_down(rig):
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"},
              telemetry={"probe": True, "prometheus_url": f"http://127.0.0.1:{free_port()}", "scrape_interval_s": 5})
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    fi = result["stages"]["flashinfer"]
    assert fi["telemetry_probe"]["ok"] is False
    assert fi["telemetry_probe"]["error"].startswith("Prometheus not reachable:")
    assert result["telemetry_probe"]["reason"].startswith("Prometheus not reachable:")
    assert fi["duration_s"] < 8, "the probe waited for a Prometheus that is not there"
    assert fi["warnings"] and fi["status"] == "ok"


def test_incomplete_flashinfer_builds_are_deleted(rig):
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"})
    assert rig.run("apply").returncode == 0
    ops = rig.root / "profiles/flashinfer/.cache/flashinfer/0.7.2.post1/90a/cached_ops"
    broken = ops / "batch_decode_with_kv_cache_dtype_q_fp16_dtype_kv_fp16_dtype_o_fp16_killed"
    broken.mkdir()
    (broken / "build.ninja").write_text("# a build killed before it linked\n")
    (ops / "tmp" / f"{broken.name}.lock").write_text("")
    if IS_ROOT:  # left by the owner's own killed build
        for p in (broken, broken / "build.ninja", ops / "tmp" / f"{broken.name}.lock"):
            os.chown(p, *OWNER)
    doc = json.loads(rig.run("plan", "--json").stdout)
    change = next(c for c in doc["changes"] if c["address"] == "flashinfer:incomplete")
    assert (change["action"], change["message"]) == ("delete", (
        "1 module build(s) without their .so (batch_decode_with_kv_cache_dtype_q_fp16_dtype_kv_fp16_dtype_o_fp16_killed); "
        "1 build lock(s) of unfinished modules whose holder is gone"))
    assert rig.stage_action(doc, "flashinfer")[1].startswith("incomplete build")
    assert rig.run("apply").returncode == 0
    assert not broken.exists() and not (ops / "tmp" / f"{broken.name}.lock").exists()
    assert rig.run("plan", "--detailed-exitcode").returncode == 0


def direct_rig(rig, **flashinfer):
    """FlashInfer built directly (no server) with the FlashInfer test double."""
    fake = rig.base / "fake_flashinfer"
    shutil.copytree(TESTS / "fake_flashinfer", fake)
    for p in [fake, *fake.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o055)
    rig.env["PYTHONPATH"] = f"{fake}:{rig.env['PYTHONPATH']}"
    rig.env["FAKE_TORCH_CUDA_CAPABILITY"] = "9.0"
    rig.write(runtime={"env": rig.env}, caches={
        "deep_gemm": "skip", "inductor": "skip",
        "flashinfer": {"mode": "ensure", "via": "direct", "verify": True, "max_parallel": 2,
                       "modules": [{"kind": "decode", "head_dim": 128, "dtype": "bf16", "backend": "fa2"},
                                   {"kind": "prefill", "head_dim": 128, "dtype": "bf16", "backend": "fa2"}],
                       **flashinfer}})
    return fake


def test_flashinfer_direct_builds_each_module_without_a_server(rig):
    fake = direct_rig(rig)
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert rig.stage_action(doc, "flashinfer")[0] == "run"
    assert not any(c["address"] == "check:server_flags" for c in doc["changes"])  # no server involved
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rig.launches() == []  # no SGLang process
    _, result = rig.prep_result(proc)
    fi = result["stages"]["flashinfer"]
    names = sorted(m["name"] for m in fi["artifacts"]["modules"])
    assert names == [
        "batch_decode_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_dtype_idx_i32_head_dim_qk_128_head_dim_vo_128"
        "_posenc_0_use_swa_False_use_logits_cap_False",
        "batch_prefill_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_dtype_idx_i32_head_dim_qk_128_head_dim_vo_"
        "128_posenc_0_use_swa_False_use_logits_cap_False_f16qk_False_kv_stride_equal"]
    assert all(m["cold"] and m["exit_code"] == 0 for m in fi["artifacts"]["modules"])
    assert fi["evidence"]["ok"] and {m["ninja"] for m in fi["evidence"]["modules"]} == {"clean"}
    assert rig.run("plan", "--detailed-exitcode").returncode == 0

    # touched package sources (a re-install): the plan predicts the rebuild, no build starts
    time.sleep(0.05)
    for p in (fake / "flashinfer" / "data").rglob("*"):
        os.utime(p)  # now: newer than the build outputs
    doc = json.loads(rig.run("plan", "--json").stdout)
    action, message = rig.stage_action(doc, "flashinfer")
    assert action == "run" and message.startswith("sources newer than the build: ninja has work in 2 module(s)")
    assert rig.run("apply").returncode == 0
    assert rig.run("plan", "--detailed-exitcode").returncode == 0

    # the module list is part of the signature
    rig.state["caches"]["flashinfer"]["modules"].append({"kind": "decode", "head_dim": 64})
    rig.write()
    action, message = rig.stage_action(json.loads(rig.run("plan", "--json").stdout), "flashinfer")
    assert action == "run" and message.startswith("signature modules ")


def test_flashinfer_direct_build_failure_exits_12(rig):
    direct_rig(rig, env={"FAKE_FLASHINFER_FAIL": "1"})
    proc = rig.run("apply")
    assert proc.returncode == 12, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    assert result["stages"]["flashinfer"]["error_type"] == "flashinfer_build_failed"


def test_runtime_is_probed_once_per_command(rig):
    """The plan's runtime probe is reused by apply's stages and by its
    last-apply record: one probe per plan, one per apply."""
    probes = rig.base / "probes.log"
    probes.touch()
    probes.chmod(0o666)
    wrapper = rig.base / "rt" / "bin" / "python-counting"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *dist_version*) echo probe >> {probes};; esac\n'
                       f'exec {runtime_python()} "$@"\n')
    wrapper.chmod(0o755)
    rig.write(runtime={"python": str(wrapper)}, caches={"flashinfer": "skip", "inductor": "skip"})

    def count() -> int:
        return len(probes.read_text().splitlines())

    assert rig.run("plan").returncode == 0
    assert count() == 1
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("RESULT_STATUS ok")
    assert count() == 2, "apply probed the runtime more than once"
    assert rig.run("apply").returncode == 0  # converged
    assert count() == 3
