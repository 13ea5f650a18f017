"""The inventory as Ansible itself reads it: the same files through
ansible-core (`ansible-inventory --list`, `ansible PATTERN --list-hosts`) and
through sglprep must give the same hosts and the same merged variables,
group_vars/ and host_vars/ included."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.state_inventory import load_inventory

REPO = Path(__file__).resolve().parent.parent


def ansible_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    venv = REPO / "bench/results/ansible-venv/bin" / name
    return str(venv) if venv.exists() else None


needs_ansible = pytest.mark.skipif(ansible_bin("ansible-inventory") is None, reason="ansible-core is not installed")

INVENTORY = """
all:
  vars:
    ansible_connection: local
    site: lab
    sglprep:
      tp: 1
      model: {path: /models/base}
  children:
    gpus:
      vars:
        sglprep:
          caches: {flashinfer: ensure}
      children:
        h100:
          vars:
            gpu_kind: h100
          hosts:
            gpu[01:02]:
        h200:
          vars:
            gpu_kind: h200
            ansible_group_priority: 5
          hosts:
            gpu03:
              rack: b
            gpu04:
              sglprep:
                tp: 8
    canary:
      hosts:
        gpu02:
        gpu04:
"""
FILES = {
    "group_vars/all.yml": "site: datacenter\nowner_team: infra\n",
    "group_vars/h200/00-base.yml": "rack: a\nsglprep:\n  model: {path: /models/big}\n",
    "group_vars/h200/10-more.yaml": "extra: [1, 2]\n",
    "group_vars/canary": "canary: true\n",
    "host_vars/gpu03.yml": "rack: c\n",
    "host_vars/gpu01/vars.yml": "sglprep:\n  tp: 2\n",
}
PATTERNS = ["all", "gpus", "h200", "gpu0*", "gpus:!gpu03", "gpus:&canary", "h100:h200", "gpus[0:2]", "gpus[-1]",
            "gpu01,gpu04", "~gpu0[13]", "*:!canary", "canary:&h200", "gpus[1:]"]


@pytest.fixture(scope="module")
def inventory_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("inv")
    (base / "inventory.yaml").write_text(INVENTORY)
    for rel, text in FILES.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)
    return base


def ansible_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
               ANSIBLE_NOCOLOR="1", ANSIBLE_HOME=str(Path(os.environ.get("TMPDIR", "/tmp")) / "sglprep-ansible-home"))
    return env


@needs_ansible
def test_same_hosts_and_merged_vars_as_ansible_inventory(inventory_dir):
    out = subprocess.run([ansible_bin("ansible-inventory"), "-i", "inventory.yaml", "--list"], cwd=inventory_dir,
                         env=ansible_env(), capture_output=True, text=True, check=True).stdout
    theirs = json.loads(out)["_meta"]["hostvars"]
    ours = load_inventory(str(inventory_dir / "inventory.yaml"), "inventory.yaml")
    assert sorted(theirs) == sorted(ours.host_names())
    for host, expected in theirs.items():
        assert ours.host(host).vars == expected, host


@needs_ansible
@pytest.mark.parametrize("pattern", PATTERNS)
def test_limit_patterns_select_what_ansible_selects(inventory_dir, pattern):
    out = subprocess.run([ansible_bin("ansible"), "-i", "inventory.yaml", pattern, "--list-hosts"],
                         cwd=inventory_dir, env=ansible_env(), capture_output=True, text=True, check=True).stdout
    theirs = [line.strip() for line in out.splitlines()[1:] if line.strip()]
    ours = load_inventory(str(inventory_dir / "inventory.yaml"), "inventory.yaml").match(pattern)
    assert sorted(ours) == sorted(theirs), pattern


def test_several_hosts_give_one_plan_each(inventory_dir):
    """A fleet on one machine: each inventory host (local connection) has its
    own storage root; --limit with a group plans each, validate --json lists each."""
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="sglprep-fleet-"))
    tmp_path.chmod(0o755)  # the storage owner must reach the roots
    for i in (1, 2, 3):
        (tmp_path / f"root{i}").mkdir()
        if os.geteuid() == 0:
            os.chown(tmp_path / f"root{i}", 4242, 4242)
    inv = tmp_path / "fleet.yaml"
    inv.write_text("all:\n  vars:\n    ansible_connection: local\n  children:\n    gpus:\n      hosts:\n"
                   + "".join(f"        gpu0{i}:\n          sglprep:\n            storage: {{root: {tmp_path}/root{i}}}\n"
                             for i in (1, 2, 3)))
    state = tmp_path / "s.yaml"
    owner = '  owner: "4242:4242"\n' if os.geteuid() == 0 else ""
    state.write_text("version: 1\nstorage:\n" + owner + "  min_free_gib: 0\nruntime: {kind: local}\n"
                     "caches: {deep_gemm: skip, moe_tune: skip, flashinfer: skip, inductor: skip}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "reconcile", "-f", str(state), "-i", str(inv), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True)

    proc = run("--limit", "gpus:!gpu02", "plan")
    assert proc.returncode == 0, proc.stderr
    headers = [ln for ln in proc.stdout.splitlines() if ln.startswith("sglprep plan · ")]
    assert [h.split(" · ")[1] for h in headers] == ["gpu01", "gpu03"]
    docs = json.loads(run("--limit", "gpus", "validate", "--json").stdout)
    assert [d["host"] for d in docs] == ["gpu01", "gpu02", "gpu03"]
    assert docs[1]["desired"]["storage"]["root"] == f"{tmp_path}/root2"
    plans = json.loads(run("--limit", "gpus[0:1]", "plan", "--json").stdout)
    assert [p["host"] for p in plans] == ["gpu01", "gpu02"]
    assert run("--limit", "gpus", "plan", "-o", str(tmp_path / "p.json")).returncode == 1
    assert "matches no host" in run("--limit", "nope*", "plan").stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
