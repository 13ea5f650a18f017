"""reconcile.runtime_flashinfer: the per-module FlashInfer build script, run
against the fake FlashInfer 0.7.2 (tests/fake_flashinfer: fake flashinfer and
fake torch, real on-disk JIT layout, real ninja when on PATH)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconcile.runtime_flashinfer import (
    BUILD_SCRIPT,
    RESULT_PREFIX,
    module_key,
    module_name,
    normalize_spec,
    parse_result,
    spec_argument,
)

FAKE_ROOT = Path(__file__).resolve().parent / "fake_flashinfer"

# Derived by hand from the real flashinfer_python-0.7.2.post1 wheel:
# get_batch_decode_uri (jit/attention/modules.py:210-231), get_batch_prefill_uri
# (407-431) and the fa2 primary module's "_kv_stride_equal" suffix (136-185,
# 1164-1192), with filename_safe_dtype_map (jit/utils.py:69-90).
DECODE_NAME = (
    "batch_decode_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_dtype_idx_i32_"
    "head_dim_qk_128_head_dim_vo_128_posenc_0_use_swa_False_use_logits_cap_False"
)
PREFILL_NAME = (
    "batch_prefill_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_dtype_idx_i32_"
    "head_dim_qk_128_head_dim_vo_128_posenc_0_use_swa_False_use_logits_cap_False_"
    "f16qk_False_kv_stride_equal"
)
PREFILL_FA3_NAME = (
    "batch_prefill_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_dtype_idx_i32_"
    "head_dim_qk_128_head_dim_vo_128_posenc_0_use_swa_False_use_logits_cap_False_"
    "f16qk_False_sm90"
)
DECODE_SPEC = {"kind": "decode", "head_dim": 128, "dtype": "bf16", "kv_dtype": None, "backend": "fa2",
               "num_qo_heads": 32, "num_kv_heads": 8, "page_size": 16}
PREFILL_SPEC = dict(DECODE_SPEC, kind="prefill")
NINJA = shutil.which("ninja")


def _env(tmp_path: Path, pkg: Path = FAKE_ROOT, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAKE_", "FLASHINFER_", "MAX_JOBS", "PYTHON"))}
    env.update(PYTHONPATH=str(pkg), FLASHINFER_WORKSPACE_BASE=str(tmp_path / "ws"),
               HOME=str(tmp_path / "home"))
    env.update(extra)
    return env


def _run(spec: dict, env: dict) -> subprocess.CompletedProcess:
    arg = spec if isinstance(spec, str) else json.dumps(spec)
    return subprocess.run([sys.executable, "-B", "-c", BUILD_SCRIPT, arg], env=env,
                          capture_output=True, text=True, timeout=60)


def _ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(RESULT_PREFIX), proc.stdout
    result = json.loads(last[len(RESULT_PREFIX):])
    assert parse_result(proc.stdout) == result
    return result


def _workspace(tmp_path: Path, version: str = "0.7.2.post1", arch: str = "90a") -> Path:
    return tmp_path / "ws" / ".cache" / "flashinfer" / version / arch


# --------------------------------------------------------------------------
# host-side helpers
# --------------------------------------------------------------------------
def test_module_names_match_the_real_source():
    assert module_name(DECODE_SPEC) == DECODE_NAME
    assert module_name(PREFILL_SPEC) == PREFILL_NAME
    assert module_name(dict(PREFILL_SPEC, backend="fa3")) == PREFILL_FA3_NAME
    assert module_name(dict(PREFILL_SPEC, backend="auto")) is None
    assert module_name(dict(PREFILL_SPEC, backend="auto"), backend="fa3") == PREFILL_FA3_NAME
    assert module_name({"kind": "decode", "dtype": "fp16", "kv_dtype": "fp8_e4m3", "head_dim": 64}) == (
        "batch_decode_with_kv_cache_dtype_q_f16_dtype_kv_e4m3_dtype_o_f16_dtype_idx_i32_"
        "head_dim_qk_64_head_dim_vo_64_posenc_0_use_swa_False_use_logits_cap_False"
    )


def test_module_key_and_spec_normalization():
    assert module_key(DECODE_SPEC) == "decode hd128 bf16/bf16 fa2"
    assert module_key({"kind": "prefill", "head_dim": 256, "kv_dtype": "fp8_e5m2", "backend": "auto"}) == \
        "prefill hd256 bf16/fp8_e5m2 auto"
    assert normalize_spec({"kind": "decode"}) == DECODE_SPEC
    assert json.loads(spec_argument({"kind": "prefill"})) == PREFILL_SPEC
    for bad in ({"kind": "mla"}, {"kind": "decode", "dtype": "fp8_e4m3"},
                {"kind": "decode", "head_dim": 0}, {"kind": "prefill", "backend": "fa4"}):
        with pytest.raises(ValueError):
            normalize_spec(bad)


def test_script_never_uses_build_jit_specs_and_module_imports_no_flashinfer():
    assert "build_jit_specs" not in BUILD_SCRIPT
    assert "build_and_load()" in BUILD_SCRIPT
    code = ("import sys, reconcile.runtime_flashinfer; "
            "sys.exit(int('flashinfer' in sys.modules or 'torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# --------------------------------------------------------------------------
# the build script against the fake
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spec,name", [(DECODE_SPEC, DECODE_NAME), (PREFILL_SPEC, PREFILL_NAME)],
                         ids=["decode", "prefill"])
def test_cold_then_warm_build(tmp_path, spec, name):
    env = _env(tmp_path)
    ws = _workspace(tmp_path)
    module_dir = ws / "cached_ops" / name
    so = module_dir / f"{name}.so"

    cold_proc = _run(spec, env)
    cold = _ok(cold_proc)
    assert cold["name"] == name == module_name(spec)
    assert cold["path"] == str(module_dir)
    assert cold["cold"] is True and cold["aot"] is False
    assert cold["kind"] == spec["kind"]
    assert cold["via"] == ("gen_batch_decode_module" if spec["kind"] == "decode"
                           else "_gen_batch_prefill_primary_module")
    assert isinstance(cold["seconds"], (int, float)) and cold["seconds"] >= 0
    assert so.is_file() and so.stat().st_size > 0
    assert (ws / "cached_ops" / "tmp" / f"{name}.lock").exists()

    ninja_text = (module_dir / "build.ninja").read_text()
    builds = [line for line in ninja_text.splitlines() if line.startswith("build ")]
    assert builds
    gen_dir = ws / "generated" / name
    for line in builds:
        out, _, rest = line[len("build "):].partition(": ")
        assert out.startswith(str(module_dir) + "/"), line
        if " link " not in f" {rest} ":
            src = rest.split(" ", 1)[1]
            assert src.startswith(str(gen_dir) + "/"), line
            text = Path(src).read_text()
            assert "#include" in text
    assert f"default {so}" in ninja_text
    building = f"Building JIT module {name}; this can take several minutes on first use."
    assert building in cold_proc.stderr
    assert building in (ws / "flashinfer_jit.log").read_text()

    warm = _ok(_run(spec, env))
    assert warm["name"] == name and warm["cold"] is False
    mtime = so.stat().st_mtime_ns
    third = _run(spec, env)
    assert _ok(third)["cold"] is False
    assert "Building JIT module" not in third.stderr
    assert so.stat().st_mtime_ns == mtime


def test_building_line_goes_to_stderr_only_on_cold(tmp_path):
    env = _env(tmp_path)
    first = _run(DECODE_SPEC, env)
    _ok(first)
    assert f"Building JIT module {DECODE_NAME}; this can take several minutes on first use." in first.stderr
    assert "flashinfer.jit:" in first.stderr
    assert "Building" not in first.stdout
    second = _run(DECODE_SPEC, env)
    _ok(second)
    assert "Building JIT module" not in second.stderr
    log = (_workspace(tmp_path) / "flashinfer_jit.log").read_text()
    assert log.count("Building JIT module") == 1


@pytest.mark.skipif(NINJA is None, reason="ninja not on PATH")
def test_ninja_dry_run_tracks_package_headers(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(FAKE_ROOT, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = _env(tmp_path, pkg=pkg)
    dirs = {}
    for spec in (DECODE_SPEC, PREFILL_SPEC):
        result = _ok(_run(spec, env))
        dirs[spec["kind"]] = result["path"]

    def dry(d):
        return subprocess.run([NINJA, "-n", "-C", d], capture_output=True, text=True, check=True).stdout

    for d in dirs.values():
        assert "no work to do" in dry(d)

    decode_so = Path(dirs["decode"]) / f"{DECODE_NAME}.so"
    before = decode_so.stat().st_mtime_ns
    future = time.time() + 3600
    data = pkg / "flashinfer" / "data"
    for root, _, files in os.walk(data):
        for f in files:
            os.utime(os.path.join(root, f), (future, future))
    decode_out, prefill_out = dry(dirs["decode"]), dry(dirs["prefill"])
    assert "no work to do" not in decode_out and "no work to do" not in prefill_out
    # As measured on the real 0.7.2 (gpu-cache-measurements.md section C):
    # 5 lines for decode, 12 for prefill (3 / 10 compiles + link + "Entering").
    assert len(decode_out.strip().splitlines()) == 5
    assert len(prefill_out.strip().splitlines()) == 12

    # The next build_and_load() rebuilds silently: .so present, so no "Building" line.
    again = _run(DECODE_SPEC, env)
    assert _ok(again)["cold"] is False
    assert "Building JIT module" not in again.stderr
    assert "Building JIT module" not in again.stdout
    assert decode_so.stat().st_mtime_ns != before  # relinked


def test_fail_env_exits_nonzero(tmp_path):
    proc = _run(DECODE_SPEC, _env(tmp_path, FAKE_FLASHINFER_FAIL="1"))
    assert proc.returncode != 0
    assert "Ninja build failed" in proc.stderr
    assert RESULT_PREFIX not in proc.stdout
    assert parse_result(proc.stdout) is None


def test_bad_spec_exits_2(tmp_path):
    env = _env(tmp_path)
    for arg in ("not json", json.dumps({"kind": "mla"}), json.dumps({"kind": "decode", "dtype": "fp32"})):
        proc = _run(arg, env)
        assert proc.returncode == 2, proc.stderr
        assert "bad spec" in proc.stderr


@pytest.mark.parametrize("extra,kv,backend,resolved_by", [
    ({}, None, "fa3", "target_archs"),                                  # no GPU, building for 90a
    ({"FAKE_FLASHINFER_ARCH": "80"}, None, "fa2", "target_archs"),      # no GPU, building for 80
    ({"FAKE_TORCH_CUDA_CAPABILITY": "9.0"}, None, "fa3", "determine_attention_backend"),
    ({"FAKE_TORCH_CUDA_CAPABILITY": "9.0"}, "fp8_e4m3", "fa2", "determine_attention_backend"),
], ids=["noGPU-90a", "noGPU-80", "H100", "H100-fp8kv"])
def test_prefill_auto_backend(tmp_path, extra, kv, backend, resolved_by):
    spec = dict(PREFILL_SPEC, backend="auto", kv_dtype=kv)
    result = _ok(_run(spec, _env(tmp_path, **extra)))
    assert result["backend"] == backend
    assert result["backend_resolved_by"] == resolved_by
    assert result["name"] == module_name(spec, backend=backend)
    arch = extra.get("FAKE_FLASHINFER_ARCH", "90a")
    assert Path(result["path"]).parent == _workspace(tmp_path, arch=arch) / "cached_ops"


def test_version_arch_and_build_delay(tmp_path):
    env = _env(tmp_path, FAKE_FLASHINFER_VERSION="0.7.3", FAKE_FLASHINFER_ARCH="100a",
               FAKE_FLASHINFER_BUILD_S="0.3")
    result = _ok(_run(DECODE_SPEC, env))
    assert result["flashinfer_version"] == "0.7.3"
    assert result["path"] == str(_workspace(tmp_path, "0.7.3", "100a") / "cached_ops" / DECODE_NAME)
    assert result["cold"] is True and result["seconds"] >= 0.3
    warm = _ok(_run(DECODE_SPEC, env))
    assert warm["seconds"] < 0.3


def test_builds_without_ninja_on_path(tmp_path):
    env = _env(tmp_path, PATH=str(tmp_path / "empty-bin"))
    result = _ok(_run(PREFILL_SPEC, env))
    so = Path(result["path"]) / f"{PREFILL_NAME}.so"
    assert result["cold"] is True and so.is_file()
    assert (Path(result["path"]) / "build.ninja").is_file()
    assert _ok(_run(PREFILL_SPEC, env))["cold"] is False
