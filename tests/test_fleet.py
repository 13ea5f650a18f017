"""A fleet through Ansible: ansible-core runs the module in ansible/library
against four inventory hosts on this machine (local connection, one storage
root each), two signature groups; the first host of each group primes first."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_ansible_fidelity import ansible_bin, ansible_env

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
OWNER = (4242, 4242) if IS_ROOT else (os.getuid(), os.getgid())
needs_ansible = pytest.mark.skipif(ansible_bin("ansible-playbook") is None, reason="ansible-core is not installed")

PRIME = """
import json, os, time
d = os.environ["SGLPREP_CACHE_DIR"]
open(os.path.join(d, "kernel.bin"), "w").write("k")
with open(os.environ["FLEET_LOG"], "a") as fh:
    fh.write(json.dumps({"dir": d, "t": time.time()}) + "\\n")
time.sleep(0.3)
"""


def fleet_base(prefix: str) -> tuple[Path, Path]:
    """A world-readable scratch dir with the priming script and its log."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    log = base / "primed.jsonl"
    log.touch()
    log.chmod(0o666)
    (base / "prime.py").write_text(PRIME)
    (base / "prime.py").chmod(0o644)
    return base, log


def fleet_state(base: Path, log: Path, rt_env: dict, **extra) -> dict:
    """Every cache stage skipped but the custom one that logs each priming."""
    from runtime_fixture import runtime_python

    return {"version": 1, "storage": {"min_free_gib": 0, **({"owner": f"{OWNER[0]}:{OWNER[1]}"} if IS_ROOT else {})},
            "runtime": {"kind": "local", "python": runtime_python(), "env": rt_env}, **extra,
            "caches": {"deep_gemm": "skip", "moe_tune": "skip", "flashinfer": "skip", "inductor": "skip",
                       "custom": {"warm": {"command": [runtime_python(), str(base / "prime.py")],
                                           "env": {"FLEET_LOG": str(log)}}}}}


def write_inventory(base: Path, groups: dict, all_vars: tuple = ()) -> None:
    """inventory.yaml: local connection, sglprep from this checkout; `groups`:
    group -> (host names, extra group var lines); each host gets its own
    storage root under base/<host>."""
    lines = ["all:", "  vars:", "    ansible_connection: local", f"    ansible_python_interpreter: {sys.executable}",
             *all_vars,
             f"    sglprep_executable: [/usr/bin/env, 'PYTHONPATH={REPO}', {sys.executable}, -m, reconcile]",
             "  children:"]
    for group, (names, group_vars) in groups.items():
        lines += [f"    {group}:", "      vars:", f"        sglprep_signature_group: {group}", *group_vars,
                  "      hosts:"]
        for name in names:
            root = base / name
            root.mkdir()
            if IS_ROOT:
                os.chown(root, *OWNER)
            lines += [f"        {name}:", "          sglprep:", f"            storage: {{root: {root}/root}}"]
    (base / "inventory.yaml").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fleet():
    import yaml

    from runtime_fixture import make_runtime

    base, log = fleet_base("sglprep-fleet-")
    rt_env = make_runtime(base / "rt")  # the fake runtime: GPUs for the probe
    (base / "state.yaml").write_text(yaml.safe_dump(fleet_state(base, log, rt_env)))
    write_inventory(base, {"h100": (["gpu01", "gpu02"], ()), "h200": (["gpu03", "gpu04"], ())},
                    all_vars=(f"    sglprep_state: {base / 'state.yaml'}",))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def playbook(base: Path, *args):
    env = {**ansible_env(), "ANSIBLE_STDOUT_CALLBACK": "default", "ANSIBLE_FORKS": "4"}
    return subprocess.run([ansible_bin("ansible-playbook"), "-i", str(base / "inventory.yaml"),
                           str(REPO / "ansible/fleet.yml"), *args], cwd=base, env=env, capture_output=True,
                          text=True, timeout=300)


def recap(out: str) -> dict:
    """host -> {ok, changed, failed, ...} from the PLAY RECAP."""
    found = {}
    for host, rest in re.findall(r"^(gpu\d+)\s+:\s+(.*)$", out, re.M):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
    return found


@needs_ansible
def test_the_fleet_playbook_primes_leaders_first_converges_and_reports_drift(fleet):
    proc = playbook(fleet)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = recap(proc.stdout)
    assert set(first) == {"gpu01", "gpu02", "gpu03", "gpu04"}
    assert all(r["changed"] == 1 and r["failed"] == 0 for r in first.values()), proc.stdout[-3000:]
    primed = [json.loads(line) for line in (fleet / "primed.jsonl").read_text().splitlines()]
    order = {Path(p["dir"]).parts[-5]: p["t"] for p in primed}  # .../<host>/root/profiles/custom/warm
    assert max(order["gpu01"], order["gpu03"]) < min(order["gpu02"], order["gpu04"]), order
    for host in first:  # each host has its own root, primed once
        assert (fleet / host / "root/profiles/custom/warm/signature.json").exists()

    again = recap(playbook(fleet).stdout)
    assert all(r["changed"] == 0 for r in again.values()), again
    check = playbook(fleet, "--check")
    assert check.returncode == 0 and all(r["changed"] == 0 for r in recap(check.stdout).values())

    shutil.rmtree(fleet / "gpu03/root/models")  # drift on one host
    check = playbook(fleet, "--check", "--diff")
    drift = recap(check.stdout)
    assert drift["gpu03"]["changed"] == 1 and drift["gpu01"]["changed"] == 0, drift
    assert "directory:models" in check.stdout
    assert not (fleet / "gpu03/root/models").exists(), "check mode changed the host"


@needs_ansible
def test_a_blocked_host_fails_with_the_fix(fleet):
    inv = fleet / "inventory.yaml"
    inv.write_text(inv.read_text().replace(f"storage: {{root: {fleet}/gpu02/root}}",
                                           "storage: {root: /proc/sglprep-cannot-be-here}"))
    proc = playbook(fleet)
    result = recap(proc.stdout)
    assert result["gpu02"]["failed"] == 1 and result["gpu01"]["failed"] == 0, result
    assert "check:storage_owner" in proc.stdout and "→" in proc.stdout


from registry_fixture import needs_registry  # noqa: E402 - the `registry` fixture is in conftest

SKUS = {"h100": [("NVIDIA H100 80GB HBM3", "9.0", "580.159.04")],
        "h200": [("NVIDIA H200", "9.0", "580.159.04")]}


@pytest.fixture
def bundled_fleet(registry):
    """Four hosts, two GPU SKUs (a fake runtime each), one loopback registry."""
    import yaml

    from runtime_fixture import make_runtime

    base, log = fleet_base("sglprep-fleet-bundles-")
    groups = {}
    for sku, gpus in SKUS.items():
        state = fleet_state(base, log, make_runtime(base / f"rt-{sku}", gpus=gpus),
                            bundles={"registry": registry[0], "repository": "fleet-e2e", "insecure": True,
                                     "timeout_s": 5})
        (base / f"{sku}.yaml").write_text(yaml.safe_dump(state))
        groups[sku] = ([f"{sku}-a", f"{sku}-b"], (f"        sglprep_state: {base / f'{sku}.yaml'}",))
    write_inventory(base, groups)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def last_result(root: Path) -> dict:
    """The newest prep_result.json an apply wrote under a storage root."""
    return json.loads(max(root.rglob("prep_result.json"), key=lambda p: p.stat().st_mtime).read_text())


def sku_recap(out: str) -> dict:
    return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
            for host, rest in re.findall(r"^(h[12]00-[ab])\s+:\s+(.*)$", out, re.M)}


@needs_ansible
@needs_registry
def test_a_fleet_compiles_once_per_signature_and_the_rest_pull(bundled_fleet):
    base = bundled_fleet
    proc = playbook(base)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    first = sku_recap(proc.stdout)
    assert set(first) == {"h100-a", "h100-b", "h200-a", "h200-b"}
    assert all(r["changed"] == 1 and r["failed"] == 0 for r in first.values()), proc.stdout[-3000:]
    compiled = sorted(Path(json.loads(line)["dir"]).parts[-5]
                      for line in (base / "primed.jsonl").read_text().splitlines())
    assert compiled == ["h100-a", "h200-a"], "one compile per distinct signature, on each group's first host"
    for host in first:
        root = base / host / "root"
        bundle = last_result(root)["stages"]["custom/warm"]["artifacts"]["bundle"]
        assert ("pushed" if host.endswith("-a") else "pulled") in bundle, (host, bundle)
        assert (root / "profiles/custom/warm/kernel.bin").read_text() == "k"
    pushed = {h: last_result(base / h / "root")["stages"]["custom/warm"]["artifacts"]["bundle"]["tag"]
              for h in ("h100-a", "h200-a")}
    assert pushed["h100-a"] != pushed["h200-a"], "two GPU SKUs must not share a bundle"

    again = playbook(base)
    assert again.returncode == 0 and all(r["changed"] == 0 for r in sku_recap(again.stdout).values()), again.stdout
    check = playbook(base, "--check")
    assert check.returncode == 0 and all(r["changed"] == 0 for r in sku_recap(check.stdout).values())
    assert len((base / "primed.jsonl").read_text().splitlines()) == 2
