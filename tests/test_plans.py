"""Plan scenarios in the anchors' style (compose's TestPlanString, pyinfra's
operation fixtures): `tests/plans/<scenario>/` holds `state.yaml`, a facts
snapshot `facts.yaml` and the expected compact plan `plan.txt`. Facts in,
whole plan out, no subprocess, no I/O on the host.

facts.yaml keys (all optional but `why`, which says what the scenario shows):
  dirs: converged | {rel: {uid, gid, mode, kind}}     ("" is the root)
  files: converged | {rel: text | {current_with: {old: new}}}
  runtime: h100 | {preset: h100, gpus: N, packages: {...}, ...} | {status: unavailable, problem: ...}
  signatures: {stage: {set: {key: value}} | {kind: unparseable, error: ...}}  (default: the wanted one)
  artifacts: {stage: {kind: missing} | {problems: [...], damaged: [...]}}     (default: whole)
  markers / locks: {name: {owner_pid, started_at, alive, host}}
  flags: {stage: parser error}
  flashinfer: [{name, has_so, so_mtime, names_own_dir, named_dir, ninja, work}]
  model: {kind, max_context}
  engine: {reachable, endpoint, error}
  containers: {name: {status, set: {config key: value}, managed}}
  ports: {port: {pid, user, cmdline}}
  pointer: {manifest_container, manifest_host, manifest_exists}

Regenerate after an intended change with SGLPREP_UPDATE_GOLDEN=1 and review the diff.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from fakes import FakeFacts, converged_dirs, dir_ok
from reconcile.context import resolve_context
from reconcile.facts_artifacts import ArtifactFact
from reconcile.facts_docker import ContainerFact, EngineFact
from reconcile.facts_host import LockFact, PointerFact, PortFact, ProcFact
from reconcile.facts_runtime import GPU, RuntimeFacts
from reconcile.facts_stages import FlashInferModule, ModelFact, SignatureFact
from reconcile.plan import build_plan, desired_container
from reconcile.stages import catalog
from reconcile.stages.plan import want_signature
from reconcile.state_container import LABEL_CONFIG, LABEL_HASH, LABEL_MANAGED, config_hash
from reconcile.state_load import load_desired
from reconcile.state_templates import desired_files

PLANS = Path(__file__).parent / "plans"
SCENARIOS = sorted(p.name for p in PLANS.iterdir() if (p / "state.yaml").exists())

H100 = RuntimeFacts(
    status="ok", python="3.11.7",
    packages={"sglang": "0.5.23", "torch": "2.9.1", "triton": "3.6.0", "flashinfer": "0.7.2.post1",
              "deep_gemm": "0.2.3.post2", "cuda_runtime": "12.8.90"},
    torch_cuda="12.8", sglang_dir="/opt/rt/sglang", flashinfer_data_dir="/opt/rt/flashinfer/data",
    flashinfer_data_newest_mtime=50.0, gpus=(GPU("NVIDIA H100 80GB HBM3", "9.0", "580.159.04"),),
    nvcc="/usr/local/cuda/bin/nvcc", nvcc_version="12.8", ninja="/usr/bin/ninja")


def _runtime(spec) -> RuntimeFacts | None:
    if spec is None:
        return None
    if spec == "h100":
        return H100
    spec = dict(spec)
    base = H100 if spec.pop("preset", None) == "h100" else RuntimeFacts(status=spec.pop("status", "unavailable"))
    gpus = spec.pop("gpus", None)
    if gpus is not None:
        base = base._replace(gpus=tuple(H100.gpus[0] for _ in range(gpus)))
    packages = spec.pop("packages", None)
    if packages is not None:
        base = base._replace(packages={k: v for k, v in {**base.packages, **packages}.items() if v})
    return base._replace(**spec)


def _lock(spec: dict) -> LockFact:
    pid = spec.get("owner_pid", 4242)
    return LockFact(name="", path="", kind=spec.get("kind", "ok"), owner_pid=pid,
                    started_at=spec.get("started_at", "2026-11-22T10:00:00Z"), host=spec.get("host", "gpu-01"),
                    command=spec.get("command", "sglprep apply"),
                    process=ProcFact(pid=pid, alive=spec.get("alive", False)), error=spec.get("error", ""))


def load_scenario(name: str):
    """(desired, facts, why) of one scenario directory."""
    here = PLANS / name
    spec = yaml.safe_load((here / "facts.yaml").read_text()) or {}
    assert spec.get("why"), f"{name}/facts.yaml must say why the scenario exists"
    old = os.getcwd()
    os.chdir(here)
    try:
        desired = load_desired("state.yaml", None, "localhost")
    finally:
        os.chdir(old)
    dirs = spec.get("dirs", {"": {}})
    if dirs == "converged":
        dirs = converged_dirs()
    else:
        dirs = {rel: dir_ok(**{k: v for k, v in (d or {}).items() if k != "kind"})._replace(
            kind=(d or {}).get("kind", "dir")) for rel, d in dirs.items()}
    files = spec.get("files", {})
    current = {f.rel: f.render() for f in desired_files(desired)}
    if files == "converged":
        files = current
    for rel, text in list(files.items()):
        if isinstance(text, dict):  # the current rendering with some text replaced
            for old, new in text["current_with"].items():
                files[rel] = current[rel].replace(old, new)
    runtime = _runtime(spec.get("runtime"))
    facts = FakeFacts(dirs=dirs, files=files, runtime=runtime, flags=spec.get("flags"),
                      locks={n: _lock(v) for n, v in (spec.get("locks") or {}).items()},
                      markers={n: _lock(v) for n, v in (spec.get("markers") or {}).items()},
                      ports={int(p): PortFact(port=int(p), state="busy", pid=v.get("pid", 0), user=v.get("user", ""),
                                              cmdline=tuple(v.get("cmdline", ())))
                             for p, v in (spec.get("ports") or {}).items()},
                      model=ModelFact(path="", **spec["model"]) if spec.get("model") else None,
                      flashinfer=tuple(FlashInferModule(**m) for m in spec.get("flashinfer") or ()),
                      engine=EngineFact(**spec["engine"]) if spec.get("engine") else None,
                      pointer=PointerFact(path="", kind="ok", **spec["pointer"]) if spec.get("pointer") else None)
    stages = {s.name: s for s in catalog.stages(desired.data)}
    for stage_name, sig in (spec.get("signatures") or {}).items():
        stage = stages[stage_name]
        rel = stage.signature_rel(desired.model_slug)
        if sig.get("kind", "ok") != "ok":
            facts.signatures[rel] = SignatureFact(path="", kind=sig["kind"], error=sig.get("error", ""))
            continue
        want = dict(want_signature(stage, desired, runtime))
        want.update(sig.get("set") or {})
        facts.signatures[rel] = SignatureFact(path="", kind="ok", signature=want)
    for stage_name, art in (spec.get("artifacts") or {}).items():
        rel = stages[stage_name].manifest_rel(desired.model_slug)
        facts._artifacts[rel] = ArtifactFact(path="", kind=art.get("kind", "ok"), files=art.get("files", 1),
                                             problems=tuple(art.get("problems", ())),
                                             damaged=tuple(art.get("damaged", ())))
    ctx = resolve_context(desired, facts)
    for cname, cspec in (spec.get("containers") or {}).items():
        config, want_hash = desired_container(desired, ctx)
        config = {**config, **(cspec.get("set") or {})}
        labels = {LABEL_MANAGED: "sglprep", LABEL_HASH: config_hash(config) if cspec.get("set") else want_hash,
                  LABEL_CONFIG: json.dumps(config)}
        if cspec.get("managed") is False:
            labels = {}
        facts.containers[cname] = ContainerFact(name=cname, kind="present", id="c0ffee" + "0" * 58,
                                                status=cspec.get("status", "running"),
                                                image_id="sha256:" + "1" * 64, labels=labels,
                                                started_at="2026-11-22T10:00:00.000000000Z")
    return desired, facts, spec["why"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_plan_scenario(name):
    desired, facts, _ = load_scenario(name)
    compact = build_plan(desired, facts).render_compact()
    expected = PLANS / name / "plan.txt"
    if os.environ.get("SGLPREP_UPDATE_GOLDEN"):
        expected.write_text(compact)
    assert compact == expected.read_text(), f"{name}: the plan differs from plan.txt"


def test_scenarios_cover_the_cases_the_design_names():
    want = {"storage_empty_root", "storage_converged", "storage_drifted", "stage_no_signature",
            "stage_signature_changed_tp", "stage_partial_marker", "flashinfer_sources_touched",
            "flashinfer_cache_moved", "runtime_unavailable", "custom_stage", "container_missing",
            "container_config_changed", "engine_unreachable"}
    assert want <= set(SCENARIOS)


def test_fake_facts_offer_the_same_methods_as_host_facts():
    from reconcile.facts_host import HostFacts

    def public(cls):
        return {n for n in dir(cls) if not n.startswith("_") and n != "CARRIED"}

    assert public(HostFacts) == public(FakeFacts), "FakeFacts and HostFacts drifted apart"
    import inspect

    for name in public(HostFacts):
        real, fake = getattr(HostFacts, name), getattr(FakeFacts, name)
        if callable(real):
            real_params = list(inspect.signature(real).parameters)
            fake_params = list(inspect.signature(fake).parameters)
            assert real_params == fake_params, f"{name}: {real_params} vs {fake_params}"


def test_a_scenario_plan_starts_no_probe_beyond_its_facts():
    """The fake answers for every fact; a storage-only scenario never asks the runtime."""
    desired, facts, _ = load_scenario("storage_converged")
    build_plan(desired, facts)
    assert not [a for a in facts.asked if a[0] in ("runtime", "server_flags", "engine")]


def test_apply_refuses_a_change_type_no_executor_handles(tmp_path):
    from reconcile.context import Context, Owner
    from reconcile.errors import InputError
    from reconcile.exec_apply import apply_plan
    from reconcile.plan_model import Change, Plan

    desired, facts, _ = load_scenario("storage_empty_root")
    ctx = Context(owner=Owner(os.getuid(), os.getgid(), "invoking user"), root=str(tmp_path / "root"),
                  hostname="gpu-01")
    plan = Plan("localhost", "state.yaml", changes=[Change("directory:telemetry", "create", "missing"),
                                                    Change("bogus:thing", "create", "missing")])
    with pytest.raises(InputError, match="no executor for resource type"):
        apply_plan(plan, desired, ctx, facts=facts, say=lambda line: None)
    assert not (tmp_path / "root").exists(), "nothing may be applied when the plan holds an unknown type"
