"""Reliability findings, each reproduced and held: planted links, FIFOs and
garbage in the storage tree, predictable temp names, concurrent applies,
leftover temp files. Run as root the owner is an unprivileged uid, as on a
host where `sudo sglprep` serves a user's storage."""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
import tempfile
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
def test_root_never_follows_a_planted_temp_name(host, tmp_path, reliability):  # noqa: F811
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
    reliability("links planted at root's temp names (plan -o)", 399, 399)


@needs_root
def test_a_pointer_linked_to_a_root_only_file_discloses_nothing(host, tmp_path, reliability):  # noqa: F811
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
    reliability("pointer linked to a root-only file", 1, 1)


@pytest.mark.parametrize("plant", ["fifo", "zero", "dir", "deep"])
def test_fact_files_cannot_hang_exhaust_or_crash_plan(host, plant, reliability):  # noqa: F811
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
    reliability("FIFO, /dev/zero link, dir or deep JSON at fact paths", len(paths), len(paths))


def test_a_dangling_or_garbage_run_lock_is_reclaimed_not_spun_on(host, reliability):  # noqa: F811
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
        reliability("dangling, empty or garbage run lock", 1, 1)


def test_leftover_temp_files_of_dead_writers_are_removed(host, reliability):  # noqa: F811
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
    reliability("temp files left by dead writers", 2, 2)


def test_an_apply_that_waited_for_the_lock_plans_again(rig, reliability):  # noqa: F811
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
    reliability("two concurrent applies, a plan during an apply", 1, 1)


def test_secrets_are_never_written_or_printed_in_clear(rig, reliability):  # noqa: F811
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
    reliability("secrets in state, plans, files, logs, output", len(outputs) * len(secrets),
                len(outputs) * len(secrets))


WARM = """
import os, sys
d = os.environ["SGLPREP_CACHE_DIR"]
for i in range(3):
    with open(os.path.join(d, f"k{i}.bin"), "w") as fh:
        fh.write("kernel" * 100)
"""


def crash_rig(rig):  # noqa: F811
    script = rig.base / "warm.py"
    script.write_text(WARM)
    script.chmod(0o644)
    cmd = [rig.state["runtime"]["python"], str(script)]
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip",
                      "custom": {"a": {"command": cmd}, "b": {"command": cmd, "verify": cmd}}})


def run_crashing(rig, n: int):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "tests/crash_at.py"), str(n), "-f", "s.yaml", "apply"],
                          cwd=rig.base, env=env, capture_output=True, text=True, timeout=120)


def every_json_parses(root: Path) -> list:
    bad = []
    for path in root.rglob("*.json"):
        if path.is_file() and not path.name.startswith("."):
            try:
                json.loads(path.read_text())
            except ValueError:
                bad.append(str(path))
    return bad


def crash_trial(rig, n: int) -> tuple:  # noqa: F811
    """Kill -9 the apply at its nth mutating call; then check and recover."""
    shutil.rmtree(rig.root, ignore_errors=True)
    crashed = run_crashing(rig, n)
    truncated = every_json_parses(rig.root)
    recover = rig.run("apply")
    plan = rig.run("plan", "--detailed-exitcode")
    leftovers = [str(p) for p in rig.root.rglob(".*") if p.name.endswith((".tmp", ".new"))]
    held = crashed.returncode == 137 and not truncated and recover.returncode == 0 and plan.returncode == 0 \
        and not leftovers
    return n, held, truncated, recover.returncode, plan.returncode, leftovers, (recover.stdout + plan.stdout)[-600:]


def test_kill_9_at_every_mutation_boundary_then_apply_converges(rig, reliability):  # noqa: F811
    """An apply with storage, a rendered file and two stages (one verified),
    killed with no cleanup at all at each of its mutating calls in turn
    (mkdir, open for writing, link, rename, unlink, rmtree). After every
    crash no JSON anywhere is truncated, and the next apply converges: the
    plan after it is empty and no temp file is left. Two hosts in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    crash_rig(rig)
    count = run_crashing(rig, 0)
    assert count.returncode == 0, count.stdout + count.stderr
    total = int(count.stderr.rsplit("MUTATIONS=", 1)[1].split()[0])
    assert total >= 50
    base = Path(tempfile.mkdtemp(prefix="sglprep-crash-"))
    base.chmod(0o755)
    try:
        other = Rig(base, DENSE)
        other.write(**{k: v for k, v in rig.state.items() if k in ("caches",)})
        crash_rig(other)
        lanes = [(rig, list(range(1, total + 1, 2))), (other, list(range(2, total + 1, 2)))]
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(lambda lane: [crash_trial(lane[0], n) for n in lane[1]], lane) for lane in lanes]
            results = sorted(r for f in futures for r in f.result())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    failures = [r for r in results if not r[1]]
    reliability("kill -9 at each mutating call of an apply → next apply converges", len(results),
                len(results) - len(failures))
    assert not failures, failures[:3]



def test_links_planted_in_the_storage_tree_are_blocked_and_never_followed(rig, tmp_path, reliability):  # noqa: F811
    """Managed dirs replaced by links to a dir outside the root: plan blocks
    them, apply writes and deletes nothing outside the root, and nothing
    anywhere is written as root."""
    script = rig.base / "warm.py"
    script.write_text(WARM)
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip",
                      "custom": {"a": {"command": [rig.state["runtime"]["python"], str(script)]}}})
    assert rig.run("apply").returncode == 0
    outside = Path(tempfile.mkdtemp(prefix="sglprep-outside-"))
    outside.chmod(0o777)
    (outside / "keep").write_text("keep\n")
    planted = ["telemetry/sglprep", "telemetry/logs", "profiles/.locks", "profiles/.in_progress",
               "telemetry/container_runs", "profiles/custom"]
    try:
        for rel in planted:
            shutil.rmtree(rig.root / rel)
            target = outside / rel.replace("/", "_")
            target.mkdir()
            target.chmod(0o777)
            as_owner(os.symlink, str(target), str(rig.root / rel))
        before = sorted(str(p) for p in outside.rglob("*"))
        plan = rig.run("plan")
        assert plan.returncode == 1
        for rel in planted:
            assert f"{rig.root / rel} is a symlink" in plan.stdout, rel
        proc = rig.run("apply")
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert sorted(str(p) for p in outside.rglob("*")) == before, "apply wrote or deleted outside the root"
        if IS_ROOT:
            strays = [str(p) for p in rig.root.rglob("*") if p.lstat().st_uid == 0]
            assert strays == []
        reliability("links planted in the storage tree (6 dirs)", len(planted), len(planted))
    finally:
        shutil.rmtree(outside, ignore_errors=True)


@needs_root
@pytest.mark.parametrize("leave_kib", [0, 24, 160])
def test_a_full_disk_ends_in_a_clean_error_and_no_partial_file(rig, reliability, leave_kib):  # noqa: F811
    """The storage on a 2 MiB tmpfs, filled to `leave_kib` KiB free before
    apply: whatever write hits ENOSPC, apply ends with one-line errors (no
    traceback), every JSON file is whole, and once space is freed the next
    apply converges."""
    mount = Path(tempfile.mkdtemp(prefix="sglprep-tiny-"))
    mount.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=2m,uid={OWNER[0]},gid={OWNER[1]},mode=0755", "tmpfs",
                    str(mount)], check=True)
    try:
        script = rig.base / "warm.py"
        script.write_text("import os\nd = os.environ['SGLPREP_CACHE_DIR']\n"
                          "open(os.path.join(d, 'k.bin'), 'wb').write(b'k' * 300_000)\n")
        rig.write(storage={"root": str(mount / "root"), "min_free_gib": 0},
                  caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip",
                          "custom": {"a": {"command": [rig.state["runtime"]["python"], str(script)]}}})
        filler = mount / "filler"

        def fill():
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)

        as_owner(fill)
        if leave_kib:
            as_owner(os.truncate, str(filler), max(0, filler.stat().st_size - leave_kib * 1024))
        proc = rig.run("apply", env={"SGLPREP_DEBUG": os.environ.get("SGLPREP_DEBUG", "")})
        assert proc.returncode in (1, 14), proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout.strip()
        assert every_json_parses(mount / "root") == []
        filler.unlink()
        assert rig.run("apply").returncode == 0
        assert rig.run("plan", "--detailed-exitcode").returncode == 0
        reliability("a full disk during apply (tmpfs, 3 fill levels)", 1, 1)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)
