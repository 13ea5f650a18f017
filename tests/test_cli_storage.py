"""The CLI against a real storage root in a temp dir: plan, apply, re-apply,
saved plans, locks, ownership, privileges, textfile metrics."""
from __future__ import annotations

import json
import os
import socket
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from reconcile.state_layout import DIRECTORIES

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
# As root the storage belongs to an unprivileged owner sglprep must write as.
OWNER = (4242, 4242) if IS_ROOT else (os.getuid(), os.getgid())
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (chown, privilege drop)")


def sglprep(*args, cwd, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    full_env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "reconcile", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def host():
    """A dir holding s.yaml, whose storage root is host/root, owned by OWNER.

    Made directly under /tmp (not pytest's 0700 tmp dir) so the unprivileged
    owner can reach it."""
    tmp_path = Path(tempfile.mkdtemp(prefix="sglprep-host-"))
    os.chmod(tmp_path, 0o755)
    base = tmp_path / "host"
    base.mkdir()
    if IS_ROOT:
        os.chown(base, *OWNER)
    owner_line = f'  owner: "{OWNER[0]}:{OWNER[1]}"\n' if IS_ROOT else ""
    (tmp_path / "s.yaml").write_text(
        f"version: 1\nstorage:\n  root: {base}/root\n{owner_line}server:\n  port: {free_port()}\n"
        "timeouts:\n  lock_s: 1\nheartbeat_s: 0.2\n"
        "caches: {deep_gemm: skip, moe_tune: skip, flashinfer: skip, inductor: skip}\n"
        "runtime: {kind: local}\n")
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def root_of(host: Path) -> Path:
    return host / "host" / "root"


def tree(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def test_empty_root_plan_apply_converge_reapply(host):
    proc = sglprep("-f", "s.yaml", "plan", cwd=host)
    assert proc.returncode == 0, proc.stderr
    creates = re.findall(r"^  \+ (\w+)\s+(\S+)", proc.stdout, re.M)
    assert [n for t, n in creates if t == "directory"] == list(DIRECTORIES)
    assert ("file", "telemetry/prometheus/prometheus.yml") in creates
    assert "Plan: 17 to create." in proc.stdout
    assert sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host).returncode == 2

    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Apply complete: 17 changed, 0 unchanged, 0 failed, 0 skipped." in proc.stdout
    root = root_of(host)
    files = tree(root)
    for rel in DIRECTORIES:
        assert (root / rel).is_dir()
    # every file and directory sglprep made belongs to the storage owner, never root
    assert {(uid, gid) for uid, gid, _ in files.values()} == {OWNER}
    assert root.stat().st_uid == OWNER[0]

    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
    assert proc.returncode == 0, proc.stdout
    assert "No changes. localhost matches s.yaml." in proc.stdout

    logs_before = sorted(os.listdir(root / "telemetry/logs"))
    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 0
    assert "Apply complete: nothing to do." in proc.stdout
    after = tree(root)
    assert after == files, "a second apply touched the host"
    assert sorted(os.listdir(root / "telemetry/logs")) == logs_before


def test_apply_json_report_and_session_log(host):
    proc = sglprep("-f", "s.yaml", "apply", "--json", cwd=host)
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["summary"] == {"changed": 17, "unchanged": 0, "failed": 0, "skipped": 0}
    assert doc["plan"]["summary"]["create"] == 17
    log = Path(doc["log_file"])
    assert log.parent == root_of(host) / "telemetry/logs"
    lines = log.read_text().splitlines()
    assert sum(" RESULT " in ln for ln in lines) == 17 and " APPLY_END " in lines[-1]


def test_saved_plan_applies_and_stale_plan_is_refused(host):
    assert sglprep("-f", "s.yaml", "plan", "-o", "p1.json", cwd=host).returncode == 0
    saved = json.loads((host / "p1.json").read_text())
    assert saved["format_version"] == "1" and saved["fingerprint"].startswith("sha256:")
    # someone changes the host between plan and apply
    (root_of(host)).mkdir()
    if IS_ROOT:
        os.chown(root_of(host), *OWNER)
    (root_of(host) / "models").mkdir()
    if IS_ROOT:
        os.chown(root_of(host) / "models", *OWNER)
    proc = sglprep("-f", "s.yaml", "apply", "p1.json", cwd=host)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Saved plan is stale" in proc.stderr and "Nothing was applied" in proc.stderr
    assert sorted(os.listdir(root_of(host))) == ["models"]

    assert sglprep("-f", "s.yaml", "plan", "-o", "p2.json", cwd=host).returncode == 0
    proc = sglprep("-f", "s.yaml", "apply", "p2.json", cwd=host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "16 changed" in proc.stdout  # models existed already


def test_state_change_makes_saved_plan_stale(host):
    assert sglprep("-f", "s.yaml", "plan", "-o", "p.json", cwd=host).returncode == 0
    with open(host / "s.yaml", "a") as fh:
        fh.write("tp: 2\n")
    proc = sglprep("-f", "s.yaml", "apply", "p.json", cwd=host)
    assert proc.returncode == 3
    assert not root_of(host).exists()


@needs_root
def test_ownership_mismatch_made_with_real_chown_is_blocked(host):
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    models = root_of(host) / "models"
    os.chown(models, 0, 0)
    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
    assert proc.returncode == 1
    assert (f"  ! directory  models                     blocked: owner 0:0, want {OWNER[0]}:{OWNER[1]} → "
            f"sudo chown {OWNER[0]}:{OWNER[1]} {models}") in proc.stdout
    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 1
    assert "failed    directory:models" in proc.stdout
    st = models.stat()
    assert (st.st_uid, st.st_gid) == (0, 0), "sglprep must never chown"
    # with ownership: ignore the same host plans a warning, not a block (the dir is still unwritable: blocked)
    os.chmod(models, 0o777)
    (host / "s.yaml").write_text((host / "s.yaml").read_text().replace("storage:\n", "storage:\n  ownership: ignore\n"))
    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
    assert proc.returncode == 0, proc.stdout
    assert "warning: " in proc.stdout and "(ownership: ignore)" in proc.stdout


@needs_root
def test_root_without_owner_or_sudo_is_blocked_and_writes_nothing(host):
    text = (host / "s.yaml").read_text()
    (host / "s.yaml").write_text(re.sub(r'  owner: "[0-9:]+"\n', "", text))
    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 1
    assert "blocked: running as root with storage.owner: auto and no SUDO_UID" in proc.stdout
    assert not root_of(host).exists()


@needs_root
def test_sudo_caller_owns_the_storage(host):
    text = (host / "s.yaml").read_text()
    (host / "s.yaml").write_text(re.sub(r'  owner: "[0-9:]+"\n', "", text))
    proc = sglprep("-f", "s.yaml", "apply", cwd=host, env={"SUDO_UID": str(OWNER[0]), "SUDO_GID": str(OWNER[1])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {(u, g) for u, g, _ in tree(root_of(host)).values()} == {OWNER}


def write_lock(path: Path, pid: int, started_at: str | None = None, host_name: str | None = None):
    path.write_text(json.dumps({"owner_pid": pid,
                                "started_at": started_at or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "host": host_name or os.uname().nodename, "command": "test"}))
    if IS_ROOT:
        os.chown(path, *OWNER)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_lock_from_dead_pid_is_reclaimed(host):
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    lock = root_of(host) / "profiles/.locks/deep_gemm.lock"
    pid = dead_pid()
    write_lock(lock, pid)
    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
    assert proc.returncode == 2
    assert re.search(rf"  - lock\s+deep_gemm\s+delete: stale, pid {pid} gone", proc.stdout)
    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 0, proc.stdout
    assert not lock.exists()


def test_stale_run_lock_is_reclaimed_by_apply(host):
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    lock = root_of(host) / "profiles/.locks/apply.lock"
    write_lock(lock, dead_pid())
    (root_of(host) / "models").rmdir()
    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root_of(host) / "models").is_dir() and not lock.exists()


def test_live_run_lock_times_out_with_exit_4(host):
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    (root_of(host) / "models").rmdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_lock(root_of(host) / "profiles/.locks/apply.lock", holder.pid, started)
        proc = sglprep("-f", "s.yaml", "apply", cwd=host)
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert f"pid {holder.pid}, started {started}" in proc.stderr
        assert not (root_of(host) / "models").exists()
        # plan takes no lock and reports the live lock, without calling it an error
        proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
        assert proc.returncode == 2 and f"held by live pid {holder.pid}" in proc.stdout
    finally:
        holder.kill()
        holder.wait()


def test_reused_pid_lock_is_stale(host):
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    # our own test process is alive but started long after this lock was taken
    write_lock(root_of(host) / "profiles/.locks/moe_tune.lock", os.getpid(), "2001-01-01T00:00:00Z")
    proc = sglprep("-f", "s.yaml", "plan", cwd=host)
    assert re.search(rf"delete: stale, pid {os.getpid()} was reused", proc.stdout), proc.stdout


def test_stale_pointer_is_deleted(host):
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    pointer = root_of(host) / "telemetry/container_run_meta.env"
    pointer.write_text("CONTAINER_RUN_META_JSON=/telemetry/container_runs/container-run-x.json\n")
    if IS_ROOT:
        os.chown(pointer, *OWNER)
    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
    assert proc.returncode == 2 and "manifest /telemetry/container_runs/container-run-x.json is gone" in proc.stdout
    # a pointer whose manifest exists is left alone
    manifest = root_of(host) / "telemetry/container_runs/container-run-x.json"
    manifest.write_text('{"container_run_id": "container-run-x"}')
    assert sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host).returncode == 0
    manifest.unlink()
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    assert not pointer.exists()


def test_hand_edited_template_is_updated_with_diff(host):
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    prom = root_of(host) / "telemetry/prometheus/prometheus.yml"
    prom.write_text(prom.read_text().replace("scrape_interval: 5s", "scrape_interval: 60s"))
    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
    assert proc.returncode == 2
    assert "-  scrape_interval: 60s" in proc.stdout and "+  scrape_interval: 5s" in proc.stdout
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    assert "scrape_interval: 5s" in prom.read_text()
    assert prom.stat().st_uid == OWNER[0]


def test_busy_port_is_reported_with_its_holder(host):
    import socket

    port = int(re.search(r"port: (\d+)", (host / "s.yaml").read_text()).group(1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        proc = sglprep("-f", "s.yaml", "plan", cwd=host)
    assert re.search(rf"= port\s+{port}\s+noop: busy, held by pid {os.getpid()}", proc.stdout), proc.stdout


def test_textfile_metrics_parse_and_are_atomic(host):
    from prometheus_client.parser import text_string_to_metric_families

    textdir = host / "textfile"
    textdir.mkdir()
    path = textdir / "sglprep.prom"
    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", "--textfile", str(path), cwd=host)
    assert proc.returncode == 2
    assert os.listdir(textdir) == ["sglprep.prom"]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(path.read_text()) for s in fam.samples}
    assert samples[("sglprep_drift_changes", (("action", "create"), ("cause", "intentional"),
                                              ("host", socket.gethostname())))] == 17
    assert samples[("sglprep_drift_changes", (("action", "create"), ("cause", "corrective"),
                                              ("host", socket.gethostname())))] == 0
    assert samples[("sglprep_drift_changes", (("action", "blocked"), ("cause", "corrective"),
                                              ("host", socket.gethostname())))] == 0
    assert samples[("sglprep_plan_success", (("host", socket.gethostname()),))] == 1
    assert abs(samples[("sglprep_last_plan_timestamp_seconds", (("host", socket.gethostname()),))] - time.time()) < 60


def test_json_plan_is_the_only_stdout(host):
    proc = sglprep("plan", "--json", "-f", "s.yaml", cwd=host)
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"format_version", "host", "state_file", "fingerprint", "summary", "changes"}
    assert doc["summary"] == {"create": 17, "update": 0, "replace": 0, "delete": 0, "run": 0, "noop": 8,
                              "blocked": 0}
    change = next(c for c in doc["changes"] if c["address"] == "directory:profiles/flashinfer")
    assert change["action"] == "create" and change["reason"] == "missing"
    assert change["depends_on"] == ["directory:profiles"]
    assert change["after"]["owner"] == f"{OWNER[0]}:{OWNER[1]}"


def test_plain_output_has_no_control_codes(host):
    proc = sglprep("-f", "s.yaml", "plan", "--no-color", cwd=host, env={"TERM": "xterm"})
    assert "\x1b" not in proc.stdout


def test_only_applies_selected_addresses_and_their_dependencies(host):
    proc = sglprep("-f", "s.yaml", "apply", "--only", "directory:profiles/flashinfer", cwd=host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(root_of(host))) == ["profiles"]
    assert sorted(os.listdir(root_of(host) / "profiles")) == [".locks", "flashinfer"]
    proc = sglprep("-f", "s.yaml", "apply", "--only", "directory:nope", cwd=host)
    assert proc.returncode == 1 and "no such resource in the plan: directory:nope" in proc.stderr


def test_plan_writes_nothing(host):
    before = tree(host)
    sglprep("-f", "s.yaml", "plan", cwd=host)
    assert tree(host) == before


def test_installed_package_works_from_any_directory(tmp_path):
    venv = tmp_path / "venv"
    # a bare venv filled by this interpreter's pip, building with the installed
    # setuptools: the package layout is what is under test, not pip's isolation
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
                          "--no-deps", "--no-build-isolation", str(REPO)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(venv / "bin/sglprep"), "validate", "--json"], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["state_file"] == "states/default.yaml"
    assert doc["desired"]["model"]["path"] == "/models/Qwen/Qwen3-Next-80B-A3B-Thinking-FP8"
    proc = subprocess.run([str(venv / "bin/sglprep"), "render", "prometheus.yml"], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "job_name: sglang" in proc.stdout


def _apply_on_a_terminal(host: Path, answer: str) -> tuple[int, str]:
    """Run `apply` with stdin and stdout on a pseudo-terminal, type `answer`."""
    import select

    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", "s.yaml", "apply"], cwd=host, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out, sent = b"", False
    deadline = time.time() + 30
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"Enter a value:" in out:
            os.write(master, answer.encode() + b"\n")
            sent = True
        if proc.poll() is not None and not ready:
            break
    proc.wait(10)
    os.close(master)
    return proc.returncode, out.decode(errors="replace")


def test_apply_on_a_terminal_asks_and_only_yes_proceeds(host):
    code, out = _apply_on_a_terminal(host, "no")
    assert "Do you want to perform these actions?" in out and "Only 'yes' will be accepted" in out
    assert code == 1 and "Apply cancelled." in out
    assert not root_of(host).exists() or not any(root_of(host).iterdir())
    code, out = _apply_on_a_terminal(host, "yes")
    assert code == 0, out
    assert "Apply complete" in out and (root_of(host) / "models").is_dir()
    # without a terminal (cron, Ansible, pipes) or with --auto-approve, nothing is asked
    (root_of(host) / "models").rmdir()
    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 0 and "Do you want" not in proc.stdout


def test_set_overrides_a_state_key_for_one_run(host):
    proc = sglprep("-f", "s.yaml", "plan", "-e", "storage.min_free_gib=0", "--set", "tp=2", cwd=host)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith(" · -e storage.min_free_gib=0 · -e tp=2")
    doc = json.loads(sglprep("-f", "s.yaml", "-e", "tp=2", "plan", "--json", cwd=host).stdout)
    assert doc["overrides"] == ["tp=2"]
    shown = json.loads(sglprep("-f", "s.yaml", "-e", "tp=2", "-e", "caches.flashinfer=rebuild", "validate", "--json",
                               cwd=host).stdout)
    assert shown["desired"]["tp"] == 2 and shown["desired"]["caches"]["flashinfer"]["mode"] == "rebuild"
    bad = sglprep("-f", "s.yaml", "plan", "-e", "tp=two", cwd=host)
    assert bad.returncode == 1 and bad.stderr.strip() == "sglprep: error: -e tp=two: tp: must be an integer, got 'two'"
    # a saved plan is bound to its overrides: applied without them, it is stale
    saved = host / "p.json"
    assert sglprep("-f", "s.yaml", "plan", "-e", "tp=2", "-o", str(saved), cwd=host).returncode == 0
    assert sglprep("-f", "s.yaml", "apply", str(saved), cwd=host).returncode == 3
    assert sglprep("-f", "s.yaml", "-e", "tp=2", "apply", str(saved), cwd=host).returncode == 0


def test_new_files_are_summarised_unless_diff_is_asked(host):
    plan = sglprep("-f", "s.yaml", "plan", cwd=host).stdout
    assert "(a new file of 20 lines; --diff shows it)" in plan and "+scrape_configs:" not in plan
    full = sglprep("-f", "s.yaml", "plan", "--diff", cwd=host).stdout
    assert "+scrape_configs:" in full and "--diff shows it" not in full


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")
def test_local_prometheus_is_started_kept_and_stopped_as_the_owner(host):
    import httpx

    port = free_port()
    state = host / "s.yaml"
    state.write_text(state.read_text() + f"telemetry:\n  prometheus_url: http://127.0.0.1:{port}\n"
                     "  prometheus: {state: running}\n")
    plan = sglprep("-f", "s.yaml", "plan", cwd=host)
    assert re.search(r"\+ telemetry\s+prometheus\s+create, start \S*prometheus on 127.0.0.1:%d" % port, plan.stdout)
    proc = sglprep("-f", "s.yaml", "apply", cwd=host, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pidfile = json.loads((root_of(host) / "telemetry/prometheus/prometheus.pid").read_text())
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=5).status_code == 200
        import psutil

        assert psutil.Process(pidfile["pid"]).uids().real == OWNER[0]
        assert (root_of(host) / "telemetry/prometheus/data").is_dir()
        assert sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host).returncode == 0  # kept: noop
        state.write_text(state.read_text().replace("prometheus: {state: running}", "prometheus: {state: absent}"))
        plan = sglprep("-f", "s.yaml", "plan", cwd=host)
        assert f"stop pid {pidfile['pid']}" in plan.stdout
        assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
        assert not psutil.pid_exists(pidfile["pid"]) or psutil.Process(pidfile["pid"]).status() == "zombie"
    finally:
        try:
            os.killpg(pidfile["pid"], 9)
        except (ProcessLookupError, PermissionError):
            pass
    state.write_text(state.read_text().replace("prometheus: {state: absent}",
                                               "prometheus: {state: running, binary: /nonexistent/prometheus}"))
    plan = sglprep("-f", "s.yaml", "plan", cwd=host)
    assert plan.returncode == 1 and "no Prometheus binary (/nonexistent/prometheus) → apt install prometheus" in \
        plan.stdout
