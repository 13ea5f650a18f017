"""Reliability findings, each reproduced and held: planted links, FIFOs and
garbage in the storage tree, predictable temp names, concurrent applies,
leftover temp files. Run as root the owner is an unprivileged uid, as on a
host where `sudo sglprep` serves a user's storage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli_storage import IS_ROOT, OWNER, REPO, host, root_of, sglprep  # noqa: F401 - `host` is a fixture
from test_stages import DENSE, Rig, rig  # noqa: F401 - `rig` is a fixture

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: the threat is root following the owner's files")


def as_owner(fn, *args):
    """Do `fn(*args)` as the storage owner (a child process), as an owner would."""
    pid = os.fork()
    if pid == 0:
        try:
            if IS_ROOT:
                os.setgroups([])
                os.setgid(OWNER[1])
                os.setuid(OWNER[0])
            fn(*args)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def applied(host):  # noqa: F811
    proc = sglprep("-f", "s.yaml", "apply", cwd=host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root_of(host)


@needs_root
def test_root_never_follows_a_planted_temp_name(host, tmp_path):  # noqa: F811
    """`plan -o` into an owner-writable dir: links at every name the old
    `.<name>.<pid>.tmp` scheme would use do not make root overwrite a file."""
    root = applied(host)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())

    def plant():
        for pid in range(last + 1, last + 400):
            os.symlink(victim, root / "telemetry" / f".plan.json.{pid}.tmp")

    as_owner(plant)
    proc = sglprep("-f", "s.yaml", "plan", "-o", str(root / "telemetry/plan.json"), cwd=host)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious\n"
    assert json.loads((root / "telemetry/plan.json").read_text())["format_version"] == "1"


@needs_root
def test_a_pointer_linked_to_a_root_only_file_discloses_nothing(host, tmp_path):  # noqa: F811
    root = applied(host)
    secret = tmp_path / "secret"
    secret.write_text("ROOT_ONLY_no_equals_sign_line\n")
    secret.chmod(0o600)
    as_owner(os.symlink, str(secret), str(root / "telemetry/container_run_meta.env"))
    proc = sglprep("-f", "s.yaml", "plan", cwd=host)
    assert "ROOT_ONLY" not in proc.stdout + proc.stderr
    assert "a symbolic link (not followed)" in proc.stdout
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    assert not os.path.lexists(root / "telemetry/container_run_meta.env")
    assert secret.read_text() == "ROOT_ONLY_no_equals_sign_line\n"
    logs = "".join(p.read_text() for p in (root / "telemetry/logs").iterdir())
    assert "ROOT_ONLY" not in logs


@pytest.mark.parametrize("plant", ["fifo", "zero", "dir", "deep"])
def test_fact_files_cannot_hang_exhaust_or_crash_plan(host, plant):  # noqa: F811
    root = applied(host)
    paths = [root / "profiles/.locks/x.lock", root / "profiles/.in_progress/deep_gemm.json",
             root / "telemetry/container_run_meta.env", root / "telemetry/sglprep/last-apply.json"]
    for path in paths:
        if path.exists():
            path.unlink()
        if plant == "fifo":
            as_owner(os.mkfifo, str(path))
        elif plant == "zero":
            as_owner(os.symlink, "/dev/zero", str(path))
        elif plant == "dir":
            as_owner(os.mkdir, str(path))
        else:
            as_owner(Path.write_text, path, "[" * 200000)
    started = time.monotonic()
    proc = sglprep("-f", "s.yaml", "plan", cwd=host, timeout=30)
    assert time.monotonic() - started < 20
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_dangling_or_garbage_run_lock_is_reclaimed_not_spun_on(host):  # noqa: F811
    root = applied(host)
    (root / "models").rmdir()
    lock = root / "profiles/.locks/apply.lock"
    for plant in ("dangling", "empty", "garbage"):
        if plant == "dangling":
            as_owner(os.symlink, "/nonexistent", str(lock))
        else:
            as_owner(Path.write_text, lock, "" if plant == "empty" else "not json\x1b[2J")
        plan = sglprep("-f", "s.yaml", "plan", cwd=host)
        assert "unparseable lock file" in plan.stdout and "\x1b[2J" not in plan.stdout
        started = time.monotonic()
        proc = sglprep("-f", "s.yaml", "apply", cwd=host, timeout=30)
        assert proc.returncode == 0, plant + proc.stdout + proc.stderr
        assert time.monotonic() - started < 10
        assert not os.path.lexists(lock) and (root / "models").is_dir()
        (root / "models").rmdir()


def test_leftover_temp_files_of_dead_writers_are_removed(host):  # noqa: F811
    root = applied(host)
    dead = 2 ** 22 + 17  # above the default pid_max on these hosts: no such process
    leftovers = [root / f"telemetry/sglprep/.last-apply.json.{dead}.tmp",
                 root / f"profiles/.locks/.apply.lock.{dead}.0a1b2c3d.new"]
    live = root / f"telemetry/.plan.json.{os.getpid()}.0a1b2c3d.tmp"
    for path in leftovers + [live]:
        as_owner(Path.write_text, path, "{")
    proc = sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host)
    assert proc.returncode == 2
    assert "2 temp file(s) left by writers that are gone" in proc.stdout
    assert sglprep("-f", "s.yaml", "apply", cwd=host).returncode == 0
    assert not any(p.exists() for p in leftovers) and live.exists()
    assert sglprep("-f", "s.yaml", "plan", "--detailed-exitcode", cwd=host).returncode == 0


def test_an_apply_that_waited_for_the_lock_plans_again(rig):  # noqa: F811
    """Two applies at once: the second waits for the run lock, plans again,
    and finds the stage the first primed: nothing runs twice, both exit 0."""
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip",
                      "inductor": {"mode": "ensure", "env": {"FAKE_SGLANG_LOAD_S": "1.5"}}},
              timeouts={"lock_s": 60})
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", "s.yaml", "apply"], cwd=rig.base, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and not rig.launches():
        time.sleep(0.05)
    # a plan during the apply: the live lock is reported, not an error
    plan = rig.run("plan")
    assert plan.returncode == 0, plan.stdout
    assert "an apply is at work" in plan.stdout
    second = rig.run("apply")
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert second.returncode == 0, second.stdout + second.stderr
    assert "planned again" in second.stderr
    assert len(rig.launches()) == 1, "the second apply primed the stage again"


def test_secrets_are_never_written_or_printed_in_clear(rig):  # noqa: F811
    secrets = {"hf_T0KEN_value_123", "sk-server-api-key-456", "custom-api-key-789", "argv-token-000"}
    script = rig.base / "warm.py"
    script.write_text("import os\nopen(os.path.join(os.environ['SGLPREP_CACHE_DIR'], 'k.bin'), 'w').write('x')\n")
    rig.env["HF_TOKEN"] = "hf_T0KEN_value_123"
    rig.write(runtime={"env": rig.env},
              server={"settings": {"api_key": "sk-server-api-key-456"}},
              caches={"deep_gemm": "ensure", "flashinfer": "skip", "inductor": "skip",
                      "custom": {"w": {"command": [rig.state["runtime"]["python"], str(script), "--token",
                                                   "argv-token-000"],
                                       "env": {"API_KEY": "custom-api-key-789"}}}})
    outputs = []
    plan = rig.run("plan", "--json", "-o", str(rig.base / "saved.json"))
    outputs += [plan.stdout, plan.stderr, (rig.base / "saved.json").read_text()]
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs += [proc.stdout, proc.stderr]
    for args in (("validate",), ("validate", "--json"), ("plan",), ("inspect", "--json")):
        done = rig.run(*args)
        outputs += [done.stdout, done.stderr]
    for path in rig.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            outputs.append(path.read_bytes().decode("utf-8", "replace"))
    leaks = [s for s in secrets for text in outputs if s in text]
    assert not leaks, leaks
    # still compared: a new token reruns the stages whose signature holds it
    rig.env["HF_TOKEN"] = "hf_T0KEN_value_124"
    rig.write(runtime={"env": rig.env}, caches={"custom": {"w": {"env": {"API_KEY": "rotated-key-000"}}}})
    doc = json.loads(rig.run("plan", "--json").stdout)
    change = next(c for c in doc["changes"] if c["address"] == "stage:custom/w")
    assert change["action"] == "run" and "env.API_KEY secret:sha256:" in change["message"]
    assert "rotated-key-000" not in json.dumps(doc)
