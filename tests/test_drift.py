"""Unattended use: rendered cron and systemd entries, a cron-like run, drift
causes (corrective vs intentional), inspect and reset."""
from __future__ import annotations

import json
import os
import socket
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli_storage import IS_ROOT, OWNER, host, root_of, sglprep  # noqa: F401 - the `host` fixture
from test_stages import Rig, rig  # noqa: F401 - the `rig` fixture

REPO = Path(__file__).resolve().parent.parent


def parse_metrics(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def cron_command(host: Path, textfile: Path) -> tuple[str, str]:
    """(PATH, shell command) of the rendered crontab entry."""
    proc = sglprep("-f", "s.yaml", "render", "crontab", "--textfile", str(textfile), "--user", "root", cwd=host)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    path = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("PATH="))
    entry = next(ln for ln in lines if re.match(r"^[0-9*]", ln))
    fields = entry.split(None, 6)
    assert fields[:5] == ["17", "3", "*", "*", "*"] and fields[5] == "root"
    command = fields[6]
    assert command.startswith("flock -n /run/lock/sglprep-plan.lock ")
    assert command.endswith(">/dev/null")
    return path, command[: -len(">/dev/null")].strip()


def cron_run(path: str, command: str, cwd: Path):
    """Like cron: no TTY, an empty environment but PATH and NO_COLOR, /bin/sh."""
    return subprocess.run(["env", "-i", f"PATH={path}", "NO_COLOR=1", "/bin/sh", "-c", command], cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) not installed")
def test_cron_like_runs_give_exit_codes_and_parseable_metrics(host):  # noqa: F811
    textfile = host / "sglprep.prom"
    path, command = cron_command(host, textfile)
    lock = Path("/run/lock/sglprep-plan.lock")
    if not lock.parent.is_dir():
        pytest.skip("no /run/lock")

    proc = cron_run(path, command, Path("/"))
    assert proc.returncode == 2, proc.stdout + proc.stderr  # an empty root: drift
    metrics = parse_metrics(textfile.read_text())
    assert metrics[("sglprep_plan_success", (("host", socket.gethostname()),))] == 1
    assert metrics[("sglprep_drift_changes", (("action", "create"), ("cause", "intentional"),
                                              ("host", socket.gethostname())))] == 17

    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    proc = cron_run(path, command, Path("/"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = parse_metrics(textfile.read_text())
    assert sum(v for (name, _), v in metrics.items() if name == "sglprep_drift_changes") == 0
    assert abs(metrics[("sglprep_last_apply_timestamp_seconds", (("host", socket.gethostname()),))] - time.time()) < 120
    assert metrics[("sglprep_apply_last_exit_code", (("host", socket.gethostname()),))] == 0
    success = metrics[("sglprep_apply_last_success_timestamp_seconds", (("host", socket.gethostname()),))]
    assert abs(success - time.time()) < 120

    state = host / "s.yaml"
    state.write_text(state.read_text() + "tp: zero\n")
    proc = cron_run(path, command, Path("/"))
    assert proc.returncode == 1
    assert parse_metrics(textfile.read_text())[("sglprep_plan_success", (("host", socket.gethostname()),))] == 0

    # the plan itself, as cron runs it but with its output kept: plain text, no control codes
    state.write_text(state.read_text().replace("tp: zero\n", ""))
    plain = command.split(" plan ")[0].replace("flock -n /run/lock/sglprep-plan.lock ", "") + " plan"
    proc = cron_run(path, plain, Path("/"))
    assert proc.returncode == 0 and "No changes." in proc.stdout and "\x1b" not in proc.stdout + proc.stderr


def test_rendered_crontab_quotes_paths(host):  # noqa: F811
    spaced = host / "my states"
    spaced.mkdir()
    shutil.copy(host / "s.yaml", spaced / "s 1.yaml")
    proc = sglprep("-f", str(spaced / "s 1.yaml"), "render", "crontab", "--textfile", "/tmp/a b.prom", cwd=host)
    entry = next(ln for ln in proc.stdout.splitlines() if re.match(r"^[0-9*]", ln))
    words = shlex.split(entry.split(None, 6)[6])
    assert words[words.index("-f") + 1] == str(spaced / "s 1.yaml")
    assert words[words.index("--textfile") + 1] == "/tmp/a b.prom"
    if "-i" in words:  # the inventory that was read (the source checkout's), never a file that does not exist
        assert Path(words[words.index("-i") + 1]).is_file()
    (host / "inventory.yaml").write_text("all:\n  hosts:\n    localhost:\n")
    proc = sglprep("-f", str(spaced / "s 1.yaml"), "render", "crontab", cwd=host)
    words = shlex.split(next(ln for ln in proc.stdout.splitlines() if re.match(r"^[0-9*]", ln)).split(None, 6)[6])
    assert words[words.index("-i") + 1] == str(host / "inventory.yaml")


def test_rendered_systemd_units(host, tmp_path):  # noqa: F811
    proc = sglprep("-f", "s.yaml", "render", "systemd", "--randomized-delay", "600", cwd=host)
    assert proc.returncode == 0
    text = proc.stdout
    assert "SuccessExitStatus=2" in text and "Persistent=true" in text and "RandomizedDelaySec=600" in text
    assert "Type=oneshot" in text and "--detailed-exitcode" in text and "--textfile" in text
    units = {}
    for unit in ("sglprep-plan.service", "sglprep-plan.timer"):
        out = sglprep("-f", "s.yaml", "render", unit, "--randomized-delay", "600", cwd=host)
        assert out.returncode == 0 and out.stdout.strip() in text
        units[unit] = tmp_path / unit
        units[unit].write_text(out.stdout)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not available")
    check = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units.values())],
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr.strip() == "", check.stderr


def test_drift_is_corrective_or_intentional(host):  # noqa: F811
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    record = json.loads((root_of(host) / "telemetry/sglprep/last-apply.json").read_text())
    assert record["intents"]["directory:models"] == f"{OWNER[0]}:{OWNER[1]}"
    assert set(record) >= {"applied_at", "desired", "intents", "facts", "sources_sha"}

    # someone removes a directory: corrective; the state asks for a new scrape interval: intentional
    (root_of(host) / "models").rmdir()
    state = host / "s.yaml"
    state.write_text(state.read_text() + "telemetry: {scrape_interval_s: 15}\n")
    proc = sglprep("-f", "s.yaml", "plan", "--json", cwd=host)
    doc = json.loads(proc.stdout)
    causes = {c["address"]: c["cause"] for c in doc["changes"] if c["action"] != "noop"}
    assert causes == {"directory:models": "corrective", "file:telemetry/prometheus/prometheus.yml": "intentional"}
    assert doc["causes"] == {"corrective": 1, "intentional": 1}
    text = sglprep("-f", "s.yaml", "plan", cwd=host).stdout
    assert re.search(r"\+ directory\s+models\s+create, owner \S+ \[corrective\]", text)
    assert "Plan: 1 to create, 1 to update. (1 corrective, 1 intentional)" in text
    textfile = host / "m.prom"
    sglprep("-f", "s.yaml", "plan", "--textfile", str(textfile), cwd=host)
    metrics = parse_metrics(textfile.read_text())
    assert metrics[("sglprep_drift_changes", (("action", "create"), ("cause", "corrective"),
                                              ("host", socket.gethostname())))] == 1
    assert metrics[("sglprep_drift_changes", (("action", "update"), ("cause", "intentional"),
                                              ("host", socket.gethostname())))] == 1

    # after the next apply, both are part of the record: nothing is left to classify
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    assert sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host).returncode == 0
    record2 = json.loads((root_of(host) / "telemetry/sglprep/last-apply.json").read_text())
    assert record2["applied_at"] >= record["applied_at"] and record2["run_id"] != record["run_id"]


def test_inspect_snapshot_shape_and_sizes(rig):  # noqa: F811
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"})
    assert rig.run("apply").returncode == 0
    proc = rig.run("inspect", "--json")
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["schema_version"] == "1"
    assert set(snap) == {"schema_version", "triton", "torchinductor", "flashinfer", "deep_gemm", "moe_configs"}
    fi = snap["flashinfer"]
    assert set(fi) >= {"exists", "partial", "partial_info", "valid", "path", "size_bytes", "file_count",
                       "latest_mtime_iso", "signature"}
    assert fi["exists"] and fi["valid"] and not fi["partial"] and fi["signature"]["model_slug"] == "demo-model"
    assert fi["size_bytes"] is None and fi["file_count"] is None  # no walk without --sizes
    assert snap["deep_gemm"]["valid"] is False and snap["deep_gemm"]["signature"] is None
    sized = json.loads(rig.run("inspect", "--json", "--sizes").stdout)["flashinfer"]
    assert sized["file_count"] > 0 and sized["size_bytes"] > 0 and sized["latest_mtime_iso"].endswith("Z")
    # a marker makes the cache partial
    marker = rig.root / "profiles/.in_progress/flashinfer.json"
    marker.write_text(json.dumps({"owner_pid": 999999, "started_at": "2026-11-22T00:00:00Z"}))
    snap = json.loads(rig.run("inspect", "--json").stdout)["flashinfer"]
    assert snap["partial"] and not snap["valid"] and snap["partial_info"]["owner_pid"] == 999999
    table = rig.run("inspect").stdout
    assert re.search(r"flashinfer\s+yes\s+no\s+yes", table), table
    # one cache, walked: its newest files are listed
    one = json.loads(rig.run("inspect", "--json", "--cache", "flashinfer").stdout)
    assert set(one) == {"schema_version", "flashinfer"}
    newest = one["flashinfer"]["newest_files"]
    assert 0 < len(newest) <= 5 and newest[0]["path"].startswith("profiles/flashinfer/")
    assert newest == sorted(newest, key=lambda f: f["mtime_iso"], reverse=True)
    text = rig.run("inspect", "--cache", "flashinfer", "--cache", "deep_gemm").stdout
    assert "newest in flashinfer:" in text and "deep_gemm" in text and "triton" not in text


def test_reset_shows_filters_deletes_and_logs(rig):  # noqa: F811
    rig.write(caches={"deep_gemm": "skip", "inductor": "skip"})
    assert rig.run("apply").returncode == 0
    fi = rig.root / "profiles/flashinfer"
    assert (fi / "demo-model" / "signature.json").exists()
    old = time.time() - 10 * 86400
    for p in [fi / "demo-model", *(fi / "demo-model").rglob("*")]:
        os.utime(p, (old, old))

    proc = rig.run("reset", "--cache", "flashinfer", "--older-than", "5", "--dry-run")
    assert proc.returncode == 0
    assert re.search(r"- cache\s+flashinfer/demo-model\s+delete: \d+ files", proc.stdout)
    assert "flashinfer/.cache" not in proc.stdout  # newer than 5 days
    assert (fi / "demo-model").exists()

    proc = rig.run("reset", "--cache", "flashinfer", "--match-slug", "demo", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [i["name"] for i in report["removed"]] == ["demo-model"]
    assert not (fi / "demo-model").exists() and (fi / ".cache").exists()
    log = Path(report["log_file"]).read_text()
    assert "RESET_REMOVED" in log and "demo-model" in log
    # the signature is gone: the stage runs again
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert next(c for c in doc["changes"] if c["address"] == "stage:flashinfer")["reason"] == "no_signature"


def test_reset_refuses_while_a_stage_lock_is_live(rig):  # noqa: F811
    assert rig.run("apply", "--only", "directory:profiles/flashinfer").returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        lock = rig.root / "profiles/.locks/flashinfer.lock"
        lock.write_text(json.dumps({"owner_pid": holder.pid, "started_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": os.uname().nodename, "command": "x"}))
        proc = rig.run("reset", "--cache", "flashinfer")
        assert proc.returncode == 1
        assert f"refusing to reset while a stage runs: flashinfer (held by live pid {holder.pid}" in proc.stderr
        assert rig.run("reset", "--cache", "flashinfer", "--dry-run").returncode == 0  # showing is fine
    finally:
        holder.kill()
        holder.wait()


def test_crontab_formats_schedule_validation_and_systemd_user(host):  # noqa: F811
    system = sglprep("-f", "s.yaml", "render", "crontab", "--user", "alice", cwd=host).stdout
    assert "save it as /etc/cron.d/sglprep" in system
    entry = next(ln for ln in system.splitlines() if re.match(r"^[0-9*@]", ln))
    assert entry.split(None, 6)[5] == "alice"
    user = sglprep("-f", "s.yaml", "render", "crontab", "--user", "alice", "--cron-format", "user", cwd=host).stdout
    assert "crontab -u alice -e" in user and "/etc/cron.d" not in user
    entry = next(ln for ln in user.splitlines() if re.match(r"^[0-9*@]", ln))
    assert entry.split(None, 5)[5].startswith("flock -n ")  # no user field in a user crontab
    for bad, why in (("61 3 * * *", "minute field '61'"), ("* * *", "has 5 fields"), ("*/0 * * * *", "not cron"),
                     ("0 0 * foo *", "month field 'foo'")):
        proc = sglprep("-f", "s.yaml", "render", "crontab", "--schedule", bad, cwd=host)
        assert proc.returncode == 1 and why in proc.stderr, (bad, proc.stderr)
    ok = sglprep("-f", "s.yaml", "render", "crontab", "--schedule", "*/15 1-5 * jan-mar mon,fri", cwd=host)
    assert ok.returncode == 0
    assert sglprep("-f", "s.yaml", "render", "crontab", "--schedule", "@daily", cwd=host).returncode == 0
    # the systemd service runs as the storage owner the state names
    state = host / "s.yaml"
    state.write_text(state.read_text().replace("storage:\n", 'storage:\n  owner: "4343:4343"\n', 1)
                     if 'owner: "' not in state.read_text() else state.read_text().replace(
                         state.read_text().split('owner: "', 1)[1].split('"', 1)[0], "4343:4343", 1))
    unit = sglprep("-f", "s.yaml", "render", "sglprep-plan.service", cwd=host).stdout
    assert "\nUser=4343\n" in unit
