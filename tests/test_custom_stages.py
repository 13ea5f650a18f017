"""Custom stages end to end with the local runtime: success, failure (exit
14), timeout, signature change, rebuild, verify, process-group teardown."""
from __future__ import annotations

import json
import os
import re
import sys

from test_stages import OWNER, Rig, rig  # noqa: F401 - the `rig` fixture

WARM = """
import json, os, sys, time
d = os.environ["SGLPREP_CACHE_DIR"]
with open(os.path.join(d, "kernels.bin"), "w") as fh:
    fh.write(os.environ.get("TAG", "x"))
print("primed", d, os.environ.get("TORCHINDUCTOR_CACHE_DIR"), flush=True)
if os.environ.get("SLEEP"):
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    time.sleep(float(os.environ["SLEEP"]))
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def setup(rig, **custom):  # noqa: F811
    script = rig.base / "warm.py"
    script.write_text(WARM)
    script.chmod(0o644)
    stage = {"mode": "ensure", "command": [rig.state["runtime"]["python"], str(script)],
             "signature": {"shapes": "1x1024,8x128"}, **custom}
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip", "custom": {"blk": stage}})


def stage(doc, name="custom/blk"):
    return next(c for c in doc["changes"] if c["address"] == f"stage:{name}")


def test_custom_stage_primes_is_noop_then_reruns_on_signature_change(rig):  # noqa: F811
    setup(rig)
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert (stage(doc)["action"], stage(doc)["message"]) == ("run", "never primed (no signature.json)")
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == ("RESULT_STATUS ok deep_gemm:skipped moe_tune:skipped flashinfer:skipped "
                                            "inductor:skipped custom/blk:ok")
    cache = rig.root / "profiles/custom/blk"
    assert (cache / "kernels.bin").read_text() == "x"
    assert "primed " + str(cache) + " " + str(rig.root / "profiles/torchinductor") in (cache / "run.log").read_text()
    sig = json.loads((cache / "signature.json").read_text())["signature"]
    assert sig["shapes"] == "1x1024,8x128" and sig["command_sha"].startswith("sha256:")
    assert sig["torch_version"] == "2.9.1"
    path, result = rig.prep_result(proc)
    assert (path.parent / "stages" / "custom.blk.json").exists()
    assert result["stages"]["custom/blk"]["env"]["SGLPREP_CACHE_DIR"] == str(cache)
    if os.geteuid() == 0:
        assert (cache / "kernels.bin").stat().st_uid == 4242

    assert rig.run("plan", "--detailed-exitcode").returncode == 0
    assert "Apply complete: nothing to do." in rig.run("apply").stdout

    setup(rig, signature={"shapes": "1x1024,8x128,32x1"})
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert stage(doc)["message"] == "signature shapes 1x1024,8x128 → 1x1024,8x128,32x1"
    setup(rig, signature={"shapes": "1x1024,8x128,32x1"}, env={"TAG": "y"})
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert stage(doc)["message"] == "signature shapes 1x1024,8x128 → 1x1024,8x128,32x1, env.TAG (none) → y"
    assert rig.run("apply").returncode == 0
    assert (cache / "kernels.bin").read_text() == "y"

    setup(rig, mode="rebuild", signature={"shapes": "1x1024,8x128,32x1"}, env={"TAG": "y"})
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert stage(doc)["message"] == "rebuild requested (caches.custom.blk: rebuild)"


def test_command_change_changes_the_signature(rig):  # noqa: F811
    setup(rig)
    assert rig.run("apply").returncode == 0
    setup(rig)
    rig.state["caches"]["custom"]["blk"]["command"].append("--more")
    rig.write()
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert re.match(r"signature command_sha sha256:\w+ → sha256:\w+$", stage(doc)["message"])


def test_failing_custom_stage_exits_14_and_keeps_its_marker(rig):  # noqa: F811
    setup(rig, env={"EXIT": "3"})
    proc = rig.run("apply")
    assert proc.returncode == 14, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    blk = result["stages"]["custom/blk"]
    assert (blk["status"], blk["status_code"], blk["error_type"]) == ("error", 14, "command_failed")
    assert blk["errors"][0]["exit_code"] == 3 and any("primed" in ln for ln in blk["errors"][0]["log_tail"])
    assert (rig.root / "profiles/.in_progress/custom.blk.json").exists()
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert stage(doc)["reason"] == "partial"


def test_custom_stage_timeout_tears_down_its_process_group(rig):  # noqa: F811
    setup(rig, env={"SLEEP": "30"}, timeout_s=1)
    proc = rig.run("apply")
    assert proc.returncode == 14
    _, result = rig.prep_result(proc)
    blk = result["stages"]["custom/blk"]
    assert blk["error_type"] == "command_timeout"
    # neither the command nor the child it forked survived
    import psutil

    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and
                 str(rig.base / "warm.py") in " ".join(p.info["cmdline"])]
    assert leftovers == []


def test_custom_verify_command_records_evidence(rig):  # noqa: F811
    check = rig.base / "check.py"
    check.write_text("import os, sys; sys.exit(0 if os.path.exists(os.path.join(os.environ['SGLPREP_CACHE_DIR'], "
                     "'kernels.bin')) else 1)\n")
    check.chmod(0o644)
    setup(rig, verify=[rig.state["runtime"]["python"], str(check)])
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, result = rig.prep_result(proc)
    assert result["stages"]["custom/blk"]["evidence"]["ok"] is True
    check.write_text("import sys; sys.exit(5)\n")
    setup(rig, mode="rebuild", verify=[rig.state["runtime"]["python"], str(check)])
    proc = rig.run("apply")
    assert proc.returncode == 14
    _, result = rig.prep_result(proc)
    assert result["stages"]["custom/blk"]["error_type"] == "verify_failed"


def test_an_unexpected_fault_in_a_stage_is_internal_error_not_a_traceback(rig):  # noqa: F811
    """A fault no error type covers (here: the stage's run.log is a directory)
    ends the stage as internal_error with the exception's one-line summary,
    the run as partial or error, exit 14, RESULT lines printed."""
    setup(rig)
    cache = rig.root / "profiles/custom/blk"
    assert rig.run("apply", "--only", "directory:profiles").returncode == 0
    cache.mkdir(parents=True)
    (cache / "run.log").mkdir()
    if os.geteuid() == 0:
        for p in (cache, cache / "run.log"):
            os.chown(p, *OWNER)
    proc = rig.run("apply")
    assert proc.returncode == 14, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[-1].endswith("custom/blk:error")
    _, result = rig.prep_result(proc)
    error = result["stages"]["custom/blk"]["errors"][0]
    assert error["error_type"] == "internal_error"
    assert error["message"].startswith("IsADirectoryError: ") and "run.log" in error["message"]
    assert (rig.root / "profiles/.in_progress/custom.blk.json").exists()


def test_a_killed_apply_leaves_no_custom_command_running_beside_the_next(rig):  # noqa: F811
    import subprocess
    import time

    from reconcile.exec_runtime import _group_alive
    from test_stages import REPO

    setup(rig, env={"SLEEP": "30"})
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    env.update(NO_COLOR="1", PYTHONPATH=str(REPO))
    apply = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", "s.yaml", "apply"], cwd=rig.base, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = rig.root / "profiles/.in_progress/custom.blk.json"
    deadline = time.time() + 20
    while time.time() < deadline and not (marker.exists() and json.loads(marker.read_text()).get("processes")):
        time.sleep(0.05)
    apply.kill()
    apply.wait()
    pgid = json.loads(marker.read_text())["processes"][0]["pgid"]
    assert _group_alive(pgid)
    setup(rig, env={"SLEEP": ""})  # the command finishes at once now
    doc = json.loads(rig.run("plan", "--json").stdout)
    orphan = next((c for c in doc["changes"] if c["address"] == "orphans:custom.blk"), None)
    marker_doc = json.loads(marker.read_text())
    assert orphan is not None and orphan["action"] == "delete", (marker_doc, [c["address"] for c in doc["changes"]])
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "orphans:custom.blk" in proc.stdout
    assert not _group_alive(pgid)


def test_inspect_credits_a_custom_stage_with_the_caches_it_filled(rig):  # noqa: F811
    """A torch.compile custom stage fills the Triton and Inductor caches: with
    the inductor stage skipped, inspect calls them valid, primed by it, and
    its manifest covers them (damage there reruns it)."""
    script = rig.base / "compile.py"
    script.write_text("import os\n"
                      "for var in ('TRITON_CACHE_DIR', 'TORCHINDUCTOR_CACHE_DIR'):\n"
                      "    d = os.path.join(os.environ[var], 'ab')\n"
                      "    os.makedirs(d, exist_ok=True)\n"
                      "    open(os.path.join(d, 'kernel.bin'), 'w').write(var)\n")
    rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip",
                      "custom": {"blk": {"mode": "ensure", "command": [rig.state["runtime"]["python"], str(script)]}}})
    assert rig.run("apply").returncode == 0
    snap = json.loads(rig.run("inspect", "--json").stdout)
    for cache in ("triton", "torchinductor"):
        assert snap[cache]["valid"] is True, snap[cache]
        assert snap[cache]["reason"] == "primed by custom/blk (valid_signature)"
        assert snap[cache]["stage"] == "custom/blk"
    assert snap["deep_gemm"]["valid"] is False
    (rig.root / "profiles/triton/ab/kernel.bin").write_text("")
    doc = json.loads(rig.run("plan", "--json").stdout)
    assert stage(doc)["reason"] == "artifact_damaged" and "profiles/triton/ab/kernel.bin" in stage(doc)["message"]
