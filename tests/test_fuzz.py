"""Property-based fuzzing of everything sglprep reads: state files,
inventories, saved plans, and the files it finds on disk (signature, lock,
marker, pointer, manifest, last-apply). Whatever the bytes, the answer is a
value or a one-line InputError naming the file: never a traceback, a hang or
a half-read."""
from __future__ import annotations

import json
import os
import tempfile

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import record
from reconcile.errors import InputError
from reconcile.state_schema import validate
from reconcile.state_yaml import load_text

SETTINGS = settings(max_examples=int(os.environ.get("SGLPREP_FUZZ_EXAMPLES", "120")), deadline=None,
                    suppress_health_check=list(HealthCheck))

KEYS = ["version", "storage", "root", "owner", "ownership", "min_free_gib", "runtime", "kind", "python", "env",
        "container", "name", "image", "model", "path", "slug", "tp", "server", "port", "settings", "extra_args",
        "caches", "deep_gemm", "flashinfer", "mode", "via", "modules", "custom", "command", "timeouts", "lock_s",
        "heartbeat_s", "telemetry", "probe", "kv_cache_dtype", "context_length", "cuda_graph"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["ensure", "rebuild", "skip", "auto", "1000:1000", "0:0", "99999999999999999999:1", "..",
                     "~/x", "/tmp/a\0b", "x" * 5000, ".inf", "2024-99-99", "8k", "on", "direct", "local"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=25)
DOCS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)
YAML_NOISE = st.sampled_from(["&a [*a]", "*undefined", "[" * 300, "!!python/object:os.system x", "\t- x",
                              "a: b: c", "\x00", "\xff\xfe", "<<: *a", "{a: 1, a: 2}", "'unterminated", "%YAML 9.9"])


def one_line(err: InputError) -> None:
    text = err.one_line()
    assert "\n" not in text and text.strip(), repr(text)


@SETTINGS
@given(DOCS)
def test_state_documents(doc):
    record("fuzzed state documents → value or one-line error", 1, 1)
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        validate(load_text(text, "s.yaml"))
    except InputError as err:
        one_line(err)
        assert err.file == "s.yaml"


@SETTINGS
@given(st.lists(st.one_of(YAML_NOISE, st.text(max_size=30)), max_size=6))
def test_state_text(pieces):
    record("fuzzed state text (YAML noise) → value or one-line error", 1, 1)
    text = "version: 1\n" + "\n".join(f"{k}: {v}" for k, v in zip(KEYS, pieces))
    try:
        validate(load_text(text, "s.yaml"))
    except InputError as err:
        one_line(err)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["all", "hosts", "children", "vars", "localhost", "gpu01", "sglprep",
                                         "sglprep_state", "ansible_connection", "ansible_host", "gpus"]),
                       VALUES, max_size=6))
def test_inventories(doc):
    record("fuzzed inventories → value or one-line error", 1, 1)
    from reconcile.state_inventory import load_inventory

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(yaml.safe_dump({"all": doc}))
    try:
        inventory = load_inventory(fh.name, "inventory.yaml")
        inventory.host("localhost")
    except InputError as err:
        one_line(err)
    finally:
        os.unlink(fh.name)


PLAN_KEYS = st.sampled_from(["format_version", "host", "state_file", "fingerprint", "changes", "warnings",
                             "address", "action", "reason", "depends_on", "before", "after"])


@SETTINGS
@given(st.dictionaries(PLAN_KEYS, VALUES, max_size=6), st.lists(st.dictionaries(PLAN_KEYS, VALUES, max_size=5),
                                                               max_size=3))
def test_saved_plans(doc, changes):
    record("fuzzed saved plans → value or one-line error", 1, 1)
    from reconcile.cli import _load_saved_plan

    doc = {"format_version": "1", **doc}
    if changes:
        doc["changes"] = changes
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(doc, fh, default=str)
    try:
        _load_saved_plan(fh.name)
    except InputError as err:
        one_line(err)
    finally:
        os.unlink(fh.name)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), DOCS.map(lambda d: json.dumps(d, default=str).encode()),
                 st.sampled_from([b"[" * 100000, b'{"owner_pid": 1e999}', b'{"owner_pid": -1}',
                                  b'{"owner_pid": 99999999999999}', b'{"files": [{"path": "../../x", "size": 1}]}',
                                  b"CONTAINER_RUN_META_JSON=/telemetry/../../etc/shadow\n",
                                  b'{"signature": {"a": [[[[[]]]]]}}'])))
def test_files_found_on_disk(data):
    record("fuzzed fact files (×5 readers) → value or one-line error", 1, 1)
    from reconcile.facts_artifacts import check
    from reconcile.facts_host import HostFacts, _pointer_fact
    from reconcile.facts_stages import signature_fact

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.json")
        with open(path, "wb") as fh:
            fh.write(data)
        facts = HostFacts()
        assert facts.lock_file("x", path).kind in ("ok", "unparseable")
        assert signature_fact(path).kind in ("ok", "unparseable")
        assert _pointer_fact(path, "/telemetry", os.path.join(d, "telemetry")).kind in ("ok", "unparseable")
        assert check(path, d).kind in ("ok", "unparseable")
        assert facts.last_apply(path).kind in ("ok", "unparseable")
