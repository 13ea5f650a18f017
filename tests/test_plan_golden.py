"""Whole-scenario plans compared as deterministic text and JSON (golden files).

Regenerate after an intended change with SGLPREP_UPDATE_GOLDEN=1 and review the diff.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from fakes import ROOT, FakeFacts, converged_dirs, dir_ok
from reconcile.facts_host import LockFact, PointerFact, PortFact, ProcFact
from reconcile.plan import build_plan
from reconcile.report_text import Writer, render_plan
from reconcile.state_load import load_desired
from reconcile.state_templates import desired_files

GOLDEN = Path(__file__).parent / "golden"
STATE = (f"version: 1\nstorage:\n  root: {ROOT}\nserver:\n  port: 30000\n"
         "caches: {deep_gemm: skip, moe_tune: skip, flashinfer: skip, inductor: skip}\n"
         "runtime: {kind: local}\n")


@pytest.fixture
def desired(tmp_path):
    (tmp_path / "s.yaml").write_text(STATE)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield load_desired("s.yaml", None, "localhost")
    finally:
        os.chdir(old)


def current_prometheus(desired) -> str:
    return desired_files(desired)[0].render()


def scenarios(desired):
    converged_files = {"telemetry/prometheus/prometheus.yml": current_prometheus(desired)}
    drifted = converged_dirs()
    del drifted["profiles/flashinfer"]
    del drifted["profiles/moe_configs"]
    drifted["models"] = dir_ok(uid=0, gid=0)
    return {
        "empty_root": FakeFacts(dirs={"": dir_ok()}),
        "converged": FakeFacts(dirs=converged_dirs(), files=converged_files),
        "drifted": FakeFacts(
            dirs=drifted,
            files={"telemetry/prometheus/prometheus.yml":
                   converged_files["telemetry/prometheus/prometheus.yml"].replace("30000", "30001")},
            locks={"deep_gemm": LockFact(name="", path="", kind="ok", owner_pid=4242,
                                         started_at="2026-11-22T10:00:00Z", host="gpu-01", command="sglprep apply",
                                         process=ProcFact(pid=4242, alive=False))},
            markers={"flashinfer": LockFact(name="", path="", kind="ok", owner_pid=4243,
                                            started_at="2026-11-22T10:05:00Z",
                                            process=ProcFact(pid=4243, alive=False))},
            pointer=PointerFact(path="", kind="ok",
                                manifest_container="/telemetry/container_runs/container-run-1.json"),
            ports={30000: PortFact(port=30000, state="busy", pid=777, user="ubuntu",
                                   cmdline=("python", "-m", "sglang.launch_server"))},
        ),
    }


@pytest.mark.parametrize("name", ["empty_root", "converged", "drifted"])
def test_golden_plan(desired, name):
    facts = scenarios(desired)[name]
    plan = build_plan(desired, facts)
    text = io.StringIO()
    render_plan(plan, Writer(text, color=False))
    doc = json.dumps(plan.to_json(), indent=2, sort_keys=True) + "\n"
    compact = plan.render_compact()
    files = {f"{name}.txt": text.getvalue(), f"{name}.json": doc, f"{name}.compact": compact}
    if os.environ.get("SGLPREP_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for fname, content in files.items():
            (GOLDEN / fname).write_text(content)
    for fname, content in files.items():
        assert content == (GOLDEN / fname).read_text(), f"{fname} differs from the golden file"


def test_plan_is_deterministic(desired):
    a = build_plan(desired, scenarios(desired)["drifted"])
    b = build_plan(desired, scenarios(desired)["drifted"])
    assert a.to_json() == b.to_json()


def test_fingerprint_changes_with_facts_but_not_with_free_space(desired):
    base = build_plan(desired, FakeFacts(dirs={"": dir_ok()}))
    fuller = build_plan(desired, FakeFacts(dirs={"": dir_ok()}, free_bytes=50 << 30))
    assert base.fingerprint == fuller.fingerprint
    other = build_plan(desired, FakeFacts(dirs={"": dir_ok(), "models": dir_ok()}))
    assert other.fingerprint != base.fingerprint


def test_converged_plan_reads_no_template_renderer(desired, monkeypatch):
    facts = scenarios(desired)["converged"]
    import reconcile.state_templates as st

    monkeypatch.setattr(st, "render_string", lambda *a, **k: pytest.fail("rendered on a converged host"))
    plan = build_plan(desired, facts)
    assert not plan.pending and not plan.blocked


def test_own_run_lock_is_not_a_change(desired):
    mine = LockFact(name="", path="", kind="ok", owner_pid=os.getpid(), started_at="2026-11-22T10:00:00Z",
                    host="gpu-01", process=ProcFact(pid=os.getpid(), alive=True, create_time=0))
    facts = FakeFacts(dirs=converged_dirs(), locks={"apply": mine})
    assert build_plan(desired, facts, own_pid=os.getpid()).find("lock:apply") is None
    assert build_plan(desired, facts).find("lock:apply").action == "noop"  # a live apply: shown, not an error


def test_color_output_has_the_same_text_as_plain(desired):
    import re

    plan = build_plan(desired, scenarios(desired)["drifted"])
    plain, colored = io.StringIO(), io.StringIO()
    render_plan(plan, Writer(plain, color=False))
    render_plan(plan, Writer(colored, color=True))
    assert "\x1b[" in colored.getvalue()
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored.getvalue()) == plain.getvalue()
