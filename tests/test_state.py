"""State loading: defaults, inventory overrides, and one-line errors for bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconcile.errors import InputError
from reconcile.state_load import load_desired, slug_from_path
from reconcile.state_schema import all_key_paths, default_document
from reconcile.state_yaml import load_text
from reconcile.state_schema import validate

REPO = Path(__file__).resolve().parent.parent


def load_state(tmp_path, text: str, inventory: str | None = None, limit: str = "localhost"):
    state = tmp_path / "s.yaml"
    state.write_text(text)
    inv = None
    if inventory is not None:
        inv = tmp_path / "inv.yaml"
        inv.write_text(inventory)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        return load_desired("s.yaml", "inv.yaml" if inv else None, limit)
    finally:
        os.chdir(old)


BAD_STATES = [
    ("syntax", "version: 1\ntp: [1,\n", "s.yaml:3: YAML syntax error: did not find expected node content"),
    ("unknown-top", "version: 1\ntpp: 2\n",
     "s.yaml:2: tpp: unknown key (did you mean 'tp'?); expected one of bundles, caches, heartbeat_s, inventory, "
     "model, runtime, server, storage, telemetry, timeouts, tp, version"),
    ("unknown-nested", "storage:\n  roots: /x\n",
     "s.yaml:2: storage.roots: unknown key (did you mean 'root'?); expected one of min_free_gib, owner, "
     "ownership, root"),
    ("mode-on", "caches:\n  flashinfer: on\n",
     "s.yaml:2: caches.flashinfer: must be one of ensure, rebuild, skip, got 'on' (YAML reads on/off/yes/no as "
     "booleans; quote the word or use a mode name)"),
    ("mode-yes-in-map", "caches:\n  deep_gemm:\n    mode: yes\n",
     "s.yaml:3: caches.deep_gemm.mode: must be one of ensure, rebuild, skip, got 'yes' (YAML reads on/off/yes/no "
     "as booleans; quote the word or use a mode name)"),
    ("mode-typo", "caches:\n  inductor: ensur\n",
     "s.yaml:2: caches.inductor: must be one of ensure, rebuild, skip, got 'ensur'"),
    ("tp-zero", "tp: 0\n", "s.yaml:1: tp: must be >= 1, got 0"),
    ("tp-string", "tp: two\n", "s.yaml:1: tp: must be an integer, got 'two'"),
    ("tp-bool", "tp: true\n", "s.yaml:1: tp: must be an integer, got 'true'"),
    ("context-8k", "server:\n  settings:\n    context_length: 8k\n",
     "s.yaml:3: server.settings.context_length: must be a plain integer, got '8k' (SGLang reads SI suffixes "
     "as powers of 1000: '8k' is 8000, not 8192; write the number)"),
    ("prefill-32Ki", "server:\n  settings:\n    max_prefill_tokens: 32Ki\n",
     "s.yaml:3: server.settings.max_prefill_tokens: must be a plain integer, got '32Ki' (SGLang reads SI "
     "suffixes as powers of 1000: '8k' is 8000, not 8192; write the number)"),
    ("total-tokens-open-setting", "server:\n  settings:\n    max_total_tokens: 1M\n",
     "s.yaml:3: server.settings.max_total_tokens: must be a plain integer, got '1M' (SGLang reads SI suffixes "
     "as powers of 1000: '8k' is 8000, not 8192; write the number)"),
    ("port-range", "server:\n  port: 70000\n", "s.yaml:2: server.port: must be <= 65535, got 70000"),
    ("mem-fraction", "server:\n  settings:\n    mem_fraction_static: 1.5\n",
     "s.yaml:3: server.settings.mem_fraction_static: must be <= 1, got 1.5"),
    ("kv-dtype", "server:\n  settings:\n    kv_cache_dtype: fp8\n",
     "s.yaml:3: server.settings.kv_cache_dtype: must be one of auto, fp8_e5m2, fp8_e4m3, mxfp8, bf16, bfloat16, "
     "nvfp4, fp4_mx_block16, got 'fp8'"),
    ("setting-name", "server:\n  settings:\n    EnableMetrics: true\n",
     "s.yaml:3: server.settings.EnableMetrics: setting names use lower_snake_case (they become --kebab-case flags)"),
    ("owner", "storage:\n  owner: bob\n",
     "s.yaml:2: storage.owner: must be 'auto' or 'UID:GID' (numbers), got 'bob'"),
    ("ownership", "storage:\n  ownership: chown\n",
     "s.yaml:2: storage.ownership: must be one of fail, ignore, got 'chown'"),
    ("runtime-kind", "runtime:\n  kind: kubernetes\n",
     "s.yaml:2: runtime.kind: must be one of docker, local, got 'kubernetes'"),
    ("gpus", "runtime:\n  container:\n    gpus: some\n",
     "s.yaml:3: runtime.container.gpus: must be 'all', 'none' or a list of device ids, got 'some'"),
    ("version", "version: 2\n", "s.yaml:1: version: must be 1, got 2"),
    ("not-a-mapping", "storage: [a]\n", "s.yaml:1: storage: must be a mapping, got ['a']"),
    ("top-not-a-mapping", "- a\n", "s.yaml:1: the state file must be a mapping of keys"),
    ("duplicate", "tp: 1\ntp: 2\n", "s.yaml:2: tp: duplicate key"),
    ("slug", "model:\n  slug: Qwen 3\n",
     "s.yaml:2: model.slug: must be 'auto' or up to 128 of [a-z0-9._-], not starting with '.', got 'Qwen 3'"),
    ("env-value", "runtime:\n  env:\n    CUDA_VISIBLE_DEVICES: 0\n",
     "s.yaml:3: runtime.env.CUDA_VISIBLE_DEVICES: must be a string, got '0'"),
    ("timeout-negative", "timeouts:\n  stage_s: -5\n", "s.yaml:2: timeouts.stage_s: must be > 0, got -5"),
    ("url", "telemetry:\n  prometheus_url: localhost:9090\n",
     "s.yaml:2: telemetry.prometheus_url: must be an http:// or https:// URL, got 'localhost:9090'"),
    ("root-null", "storage:\n  root:\n", "s.yaml:2: storage.root: must be a string, got null"),
]


@pytest.mark.parametrize("case", BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_bad_state_is_one_line_error(tmp_path, case):
    _, text, message = case
    with pytest.raises(InputError) as err:
        load_state(tmp_path, text)
    assert err.value.one_line() == message


def test_inventory_override_error_points_at_inventory_line(tmp_path):
    inventory = "all:\n  hosts:\n    localhost:\n      sglprep:\n        tp: 0\n"
    with pytest.raises(InputError) as err:
        load_state(tmp_path, "version: 1\n", inventory)
    assert err.value.one_line() == "inv.yaml:5: tp: must be >= 1, got 0"


def test_inventory_dotted_override_and_precedence(tmp_path):
    inventory = """
all:
  vars:
    sglprep:
      tp: 2
      caches.flashinfer: skip
  children:
    h100:
      hosts:
        localhost:
          sglprep:
            model.path: /models/Llama-3-8B
            caches: {deep_gemm: {verify: true}}
      vars:
        sglprep: {tp: 4}
"""
    merged = "version: 1\ninventory: {hash_behaviour: merge}\ncaches:\n  deep_gemm: rebuild\n"
    desired = load_state(tmp_path, merged, inventory)
    assert desired.data["tp"] == 4
    assert desired.data["model"]["path"] == "/models/Llama-3-8B"
    assert desired.model_slug == "llama-3-8b"
    assert desired.data["caches"]["flashinfer"]["mode"] == "skip"
    # a bare mode in the state file merges with a mapping from the inventory
    assert desired.data["caches"]["deep_gemm"] == {"mode": "rebuild", "verify": True, "timeout_s": None, "env": {}}
    # Ansible's default, replace: the host's own sglprep mapping wins whole (no tp from its groups)
    desired = load_state(tmp_path, "version: 1\ncaches:\n  deep_gemm: rebuild\n", inventory)
    assert desired.data["tp"] == 1 and desired.data["model"]["path"] == "/models/Llama-3-8B"
    assert desired.data["caches"]["flashinfer"]["mode"] == "ensure"


def test_inventory_picks_state_file(tmp_path):
    (tmp_path / "states").mkdir()
    (tmp_path / "states" / "big.yaml").write_text("tp: 8\n")
    (tmp_path / "inv.yaml").write_text("all:\n  hosts:\n    localhost:\n      sglprep_state: states/big.yaml\n")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        desired = load_desired(None, "inv.yaml", "localhost")
    finally:
        os.chdir(old)
    assert desired.data["tp"] == 8 and desired.state_file == "states/big.yaml"


def test_remote_limit_is_a_clear_error(tmp_path):
    inventory = "all:\n  hosts:\n    gpu-[01:02]:\n      ansible_host: 10.0.0.7\n"
    with pytest.raises(InputError) as err:
        load_state(tmp_path, "version: 1\n", inventory, limit="gpu-02")
    assert err.value.one_line() == (
        "inv.yaml: host 'gpu-02' is remote; this version reconciles only the local host "
        "(use --limit localhost, or run sglprep on gpu-02 itself)")


def test_unknown_limit_host(tmp_path):
    with pytest.raises(InputError) as err:
        load_state(tmp_path, "version: 1\n", "all:\n  hosts:\n    a:\n", limit="b")
    assert "host 'b' is not in the inventory" in err.value.one_line()


def test_default_state_file_matches_schema_defaults():
    doc = load_text((REPO / "states" / "default.yaml").read_bytes(), "states/default.yaml")
    assert validate(doc) == default_document()


def test_every_key_is_documented_in_default_state():
    text = (REPO / "states" / "default.yaml").read_text()
    documented = yaml.safe_load(text)
    for path in all_key_paths():
        node = documented
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif path[0] == "caches" and len(path) == 3:
                # per-stage options are documented in the caches comment block
                assert f"{path[2]}:" in text.split("caches:", 1)[1], f"caches option {path[2]} undocumented"
                break
            else:
                pytest.fail(f"{'.'.join(path)} is not documented in states/default.yaml")


@pytest.mark.parametrize("path, slug", [
    ("/models/Qwen/Qwen3-Next-80B-A3B-Thinking-FP8", "qwen3-next-80b-a3b-thinking-fp8"),
    ("/models/meta llama/Llama 3.1 8B/", "llama-3.1-8b"),
    ("/", "model"),
])
def test_slug_from_path(path, slug):
    assert slug_from_path(path) == slug


def run_cli(*args, cwd=None, env=None):
    full_env = dict(os.environ, NO_COLOR="1", PYTHONPATH=str(REPO))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "reconcile", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", [c for c in BAD_STATES if c[0] in ("mode-on", "tp-zero", "context-8k", "syntax")],
                         ids=lambda c: c[0])
def test_cli_bad_input_exit_1_no_traceback_nothing_written(tmp_path, case):
    _, text, message = case
    (tmp_path / "s.yaml").write_text(text)
    out = tmp_path / "plan.json"
    textfile = tmp_path / "m.prom"
    proc = run_cli("-f", "s.yaml", "plan", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"sglprep: error: {message}\n"
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    proc = run_cli("-f", "s.yaml", "apply", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (1, f"sglprep: error: {message}\n")
    # with --textfile, cron still learns that the plan failed
    proc = run_cli("-f", "s.yaml", "plan", "--textfile", str(textfile), cwd=tmp_path)
    assert proc.returncode == 1
    assert f'sglprep_plan_success{{host="{__import__("socket").gethostname()}"}} 0.0' in textfile.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.prom", "s.yaml"]


def test_cli_validate_prints_merged_state(tmp_path):
    (tmp_path / "s.yaml").write_text("tp: 2\ncaches:\n  inductor: rebuild\n")
    proc = run_cli("-f", "s.yaml", "validate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["tp"] == 2
    assert doc["caches"]["inductor"] == {"mode": "rebuild", "verify": False, "timeout_s": None, "env": {}}
    assert doc["server"]["settings"]["kv_cache_dtype"] == "fp8_e4m3"
    proc = run_cli("validate", "--json", "-f", "s.yaml", cwd=tmp_path)
    import json

    assert json.loads(proc.stdout)["desired"]["tp"] == 2


def test_cli_unknown_inventory_group_key_warns(tmp_path):
    (tmp_path / "s.yaml").write_text("version: 1\n")
    (tmp_path / "inv.yaml").write_text("all:\n  hosts:\n    localhost:\n  host_vars:\n    x: 1\n")
    proc = run_cli("-f", "s.yaml", "-i", "inv.yaml", "validate", cwd=tmp_path)
    assert proc.returncode == 0
    assert ('Skipping unexpected key (host_vars) in group (all), only "vars", "children" and "hosts" are valid'
            in proc.stderr)


@pytest.mark.parametrize("state", sorted(p.name for p in (REPO / "states").glob("*.yaml")))
def test_every_shipped_state_validates(state):
    doc = load_text((REPO / "states" / state).read_bytes(), f"states/{state}")
    validate(doc)
