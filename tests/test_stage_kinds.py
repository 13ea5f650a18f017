"""Table tests per stage kind: `signature()`, `option_problem()`,
`server_argv()` and the spec the catalog exposes. Pure: a desired state and
runtime facts in, values out."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconcile.errors import InputError
from reconcile.facts_runtime import GPU, RuntimeFacts
from reconcile.stages import catalog
from reconcile.stages.custom import Custom
from reconcile.stages.deep_gemm import DeepGemm
from reconcile.stages.flashinfer import FlashInfer, FlashInferDirect
from reconcile.stages.inductor import Inductor
from reconcile.stages.moe_tune import MoeTune
from reconcile.state_schema import validate
from reconcile.state_spec import SETTINGS_FIELDS
from reconcile.state_yaml import load_text

RT = RuntimeFacts(status="ok", python="3.11.7",
                  packages={"sglang": "0.5.23", "torch": "2.9.1", "triton": "3.6.0", "flashinfer": "0.7.2.post1",
                            "deep_gemm": "0.2.3.post2"},
                  torch_cuda="12.8", gpus=(GPU("NVIDIA H200", "9.0", "580.1"),), nvcc="/usr/bin/nvcc",
                  nvcc_version="12.8", ninja="/usr/bin/ninja")
RUNTIME_KEYS = {"device_name": "NVIDIA H200", "compute_capability": "sm_90", "gpu_count": 1,
                "driver_version": "580.1", "cuda": "12.8", "torch_version": "2.9.1", "triton_version": "3.6.0",
                "sglang_version": "0.5.23"}
BASE = {"model": {"path": "/m/demo"}, "server": {"port": 31000, "settings": {"kv_cache_dtype": "fp8_e4m3"}},
        "timeouts": {"stage_s": 900}}


def data(**over) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in over.items():
        target = doc
        parts = key.split("__")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return validate(load_text(yaml.safe_dump(doc), "t.yaml"))


def stage(kind, **over):
    d = data(**over)
    if kind is Custom:
        return Custom.instances(d)[0]
    return kind.select(d)(d)


# settings in the order the state gives them (kv_cache_dtype first here), then the defaults
COMMON = ["--model-path", "/m/demo", "--host", "127.0.0.1", "--port", "31000", "--tp-size", "1",
          "--kv-cache-dtype", "fp8_e4m3", "--mem-fraction-static", "0.94", "--chunked-prefill-size", "4096",
          "--max-mamba-cache-size", "1", "--context-length", "32768", "--max-prefill-tokens", "32768"]


# ------------------------------------------------------------------ signature

@pytest.mark.parametrize("kind,over,extra", [
    (DeepGemm, {}, {"deep_gemm_version": "0.2.3.post2", "chunked_prefill_size": 4096, "kv_cache_dtype": "fp8_e4m3",
                    "mem_fraction_static": 0.94, "context_length": 32768, "max_prefill_tokens": 32768}),
    (DeepGemm, {"server__settings__enable_dp_attention": True, "server__extra_args": ["--foo"]},
     {"deep_gemm_version": "0.2.3.post2", "chunked_prefill_size": 4096, "kv_cache_dtype": "fp8_e4m3",
      "mem_fraction_static": 0.94, "context_length": 32768, "max_prefill_tokens": 32768,
      "enable_dp_attention": True, "extra_args": ["--foo"]}),
    (MoeTune, {"caches__moe_tune": {"mode": "ensure", "script": "/t.py", "batch_sizes": [1, 8]},
               "server__settings__enable_dp_attention": True},  # free-form flags do not shape tuner configs
     {"script": "/t.py", "batch_sizes": [1, 8], "dtype": "fp8_w8a8", "tuner_args": []}),
    (FlashInfer, {"caches__flashinfer": {"mode": "ensure", "attention_backend": "flashinfer"}},
     {"flashinfer_version": "0.7.2.post1", "kv_cache_dtype": "fp8_e4m3", "context_length": 32768,
      "max_prefill_tokens": 32768, "attention_backend": "flashinfer", "via": "server", "modules": []}),
    (Inductor, {"caches__inductor": {"mode": "ensure", "env": {"TORCHINDUCTOR_MAX_AUTOTUNE": "1"}}},
     {"cuda_graph": True, "mem_fraction_static": 0.94, "chunked_prefill_size": 4096, "kv_cache_dtype": "fp8_e4m3",
      "context_length": 32768, "env.TORCHINDUCTOR_MAX_AUTOTUNE": "1"}),
])
def test_builtin_signature(kind, over, extra):
    sig = stage(kind, **over).signature("demo", RT, SETTINGS_FIELDS)
    assert sig == {"model_slug": "demo", "tp": 1, **RUNTIME_KEYS, **extra}


def test_flashinfer_direct_signature_lists_its_modules_and_no_free_form_flags():
    s = stage(FlashInfer, caches__flashinfer={"mode": "ensure", "via": "direct", "modules": [{"kind": "decode"}]},
              server__settings__enable_dp_attention=True)
    assert isinstance(s, FlashInferDirect)
    sig = s.signature("demo", RT, SETTINGS_FIELDS)
    assert sig["via"] == "direct" and sig["modules"][0]["kind"] == "decode"
    assert "enable_dp_attention" not in sig


def test_custom_signature_is_runtime_user_values_command_hash_and_env():
    s = stage(Custom, caches__custom={"warm": {"command": ["/bin/warm", "--all"], "signature": {"block": "mlp"},
                                               "env": {"A": "1"}}})
    sig = s.signature("demo", RT, SETTINGS_FIELDS)
    assert set(sig) == set(RUNTIME_KEYS) | {"block", "command_sha", "env.A"}
    assert "model_slug" not in sig and "tp" not in sig
    other = stage(Custom, caches__custom={"warm": {"command": ["/bin/warm"], "signature": {"block": "mlp"},
                                                   "env": {"A": "1"}}})
    assert other.signature("demo", RT, SETTINGS_FIELDS)["command_sha"] != sig["command_sha"]


# ------------------------------------------------------------------ option_problem

NO_SGLANG = RT._replace(packages={k: v for k, v in RT.packages.items() if k != "sglang"})
NO_FI = RT._replace(packages={k: v for k, v in RT.packages.items() if k != "flashinfer"})


@pytest.mark.parametrize("kind,over,runtime,problem", [
    (DeepGemm, {}, RT, ""),
    (DeepGemm, {}, NO_SGLANG, "sglang is not installed in runtime python 'python3'"),
    (MoeTune, {"caches__moe_tune": "ensure"}, RT,
     "caches.moe_tune.script is not set → point it at the fused-MoE tuner "
     "(benchmark/kernels/fused_moe_triton/tuning_fused_moe_triton.py of your SGLang tag)"),
    (MoeTune, {"caches__moe_tune": {"mode": "ensure", "script": "/t.py"}}, RT, ""),
    (Inductor, {"server__settings__cuda_graph": False}, RT,
     "server.settings.cuda_graph is false: torch.compile runs only during decode CUDA-graph capture, so the "
     "inductor stage would compile nothing → enable cuda_graph"),
    (Inductor, {}, NO_SGLANG, "sglang is not installed in runtime python 'python3'"),
    (FlashInfer, {}, RT, ""),
    (FlashInfer, {"caches__flashinfer": {"mode": "ensure", "via": "direct"}}, RT,
     "caches.flashinfer.via is direct but caches.flashinfer.modules lists no module"),
    (FlashInfer, {"caches__flashinfer": {"mode": "ensure", "via": "direct", "modules": [{"kind": "prefill"}]}},
     NO_SGLANG, ""),  # direct builds need no sglang
    (FlashInfer, {"caches__flashinfer": {"mode": "ensure", "via": "direct", "modules": [{"kind": "prefill"}]}},
     NO_FI, "flashinfer is not installed in runtime python 'python3'"),
    (Custom, {"caches__custom": {"x": {"command": ["/bin/true"]}}}, NO_SGLANG, ""),
])
def test_option_problem(kind, over, runtime, problem):
    assert stage(kind, **over).option_problem(runtime) == problem


# ------------------------------------------------------------------ server_argv

@pytest.mark.parametrize("kind,over,module,tail", [
    (DeepGemm, {}, "sglang.compile_deep_gemm", ["--timeout", "900"]),
    (DeepGemm, {"caches__deep_gemm": {"mode": "ensure", "timeout_s": 120}, "server__extra_args": ["--x", "1"]},
     "sglang.compile_deep_gemm", ["--timeout", "120", "--x", "1"]),
    (FlashInfer, {"caches__flashinfer": {"mode": "ensure", "attention_backend": "flashinfer"}},
     "sglang.launch_server", ["--enable-metrics", "--watchdog-timeout", "900", "--attention-backend", "flashinfer"]),
    (FlashInfer, {}, "sglang.launch_server", ["--enable-metrics", "--watchdog-timeout", "900"]),
    (Inductor, {}, "sglang.launch_server", ["--enable-metrics", "--watchdog-timeout", "900",
                                            "--enable-torch-compile"]),
    (MoeTune, {}, "sglang.launch_server", ["--enable-metrics", "--watchdog-timeout", "900"]),
])
def test_server_argv(kind, over, module, tail):
    s = stage(kind, **over)
    assert s.server_module == module
    assert s.server_argv() == COMMON + tail


def test_cuda_graph_off_uses_the_per_phase_backend_flags():
    argv = stage(Inductor, server__settings__cuda_graph=False).server_argv()
    assert argv[argv.index("--cuda-graph-backend-decode") + 1] == "disabled"
    assert "--disable-cuda-graph" not in argv


def test_flag_check_argv_drops_compile_deep_gemm_own_timeout():
    assert stage(DeepGemm).flags_argv() == COMMON


@pytest.mark.parametrize("kind,extra", [
    (DeepGemm, []),  # a restart of deep_gemm's cache is a plain server
    (Inductor, ["--enable-torch-compile"]),
    (FlashInfer, []),
])
def test_verify_restart_is_a_launch_server_with_the_stage_timeout(kind, extra):
    assert stage(kind).verify_argv() == COMMON + ["--enable-metrics", "--watchdog-timeout", "900"] + extra


# ------------------------------------------------------------------ spec

def test_catalog_order_exit_codes_and_addresses():
    d = data(caches__custom={"b": {"command": ["/b"]}, "a": {"command": ["/a"]}})
    stages = catalog.stages(d)
    assert [s.name for s in stages] == ["deep_gemm", "moe_tune", "flashinfer", "inductor", "custom/a", "custom/b"]
    assert [s.exit_code for s in stages] == [10, 11, 12, 13, 14, 14]
    assert stages[4].file_name == "custom.a" and stages[4].key == "caches.custom.a"
    assert stages[4].signature_rel("demo") == "profiles/custom/a/signature.json"
    assert stages[0].signature_rel("demo") == "profiles/deep_gemm/demo/signature.json"


def test_depends_follow_the_spec():
    fi = stage(FlashInfer)
    assert fi.depends(31000, "sglang-dev") == (
        "directory:profiles/flashinfer", "directory:profiles/.locks", "directory:profiles/.in_progress",
        "check:runtime", "check:free_disk", "container:sglang-dev", "check:flashinfer_toolchain",
        "flashinfer:incomplete", "orphans:flashinfer", "check:gpu_count", "check:model", "check:server_flags", "port:31000",
        "directory:telemetry/container_runs", "directory:telemetry/logs")
    direct = stage(FlashInfer, caches__flashinfer={"mode": "ensure", "via": "direct", "modules": [{"kind": "decode"}]})
    assert "port:31000" not in direct.depends(31000) and "check:flashinfer_toolchain" in direct.depends(31000)
    assert stage(MoeTune).depends(31000)[-3:] == ("check:gpu_count", "check:model", "orphans:moe_tune")


def test_catalog_declares_caches_resources_and_schema():
    assert list(catalog.caches()) == ["triton", "torchinductor", "flashinfer", "deep_gemm", "moe_configs"]
    assert catalog.resource_types() == {"flashinfer": FlashInfer}
    assert catalog.default_modes() == {"deep_gemm": "ensure", "moe_tune": "skip", "flashinfer": "ensure",
                                       "inductor": "skip"}
    assert set(catalog.option_specs()) == {"deep_gemm", "moe_tune", "flashinfer", "inductor", "custom"}


def test_bad_custom_stage_name_names_the_key():
    with pytest.raises(InputError) as err:
        data(caches__custom={"Bad Name": {"command": ["/x"]}})
    assert err.value.key == "caches.custom.Bad Name"
    assert "custom stage names use [a-z0-9_-]" in err.value.message


def test_moe_routing_only_once_its_cache_is_valid():
    d = data(caches__moe_tune={"mode": "ensure", "script": "/t.py"})
    assert catalog.conditional_routing(set(), d) == {}
    assert catalog.conditional_routing({"moe_tune"}, d) == {"SGLANG_MOE_CONFIG_DIR": "moe_configs"}


def test_a_new_kind_is_one_module_and_one_catalog_line():
    """The README's worked example, built for real: its module copied from the
    README into a copy of the package, one line added to the catalog, then
    validated, planned and applied against the SGLang test double."""
    import json
    import re
    import shutil
    import tempfile

    from test_stages import DENSE, REPO, Rig

    readme = (REPO / "README.md").read_text()
    section = readme.split("### Adding a stage kind", 1)[1]
    module = re.search(r"```python\n(# reconcile/stages/cuda_jit.py\n.*?)```", section, re.S).group(1)
    pkg = Path(tempfile.mkdtemp(prefix="sglprep-newkind-"))
    pkg.chmod(0o755)
    try:
        for name in ("reconcile", "states", "templates"):
            shutil.copytree(REPO / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__"))
        (pkg / "reconcile/stages/cuda_jit.py").write_text(module)
        catalog_py = pkg / "reconcile/stages/catalog.py"
        text = catalog_py.read_text().replace("from .custom import Custom",
                                              "from .cuda_jit import CudaJit\nfrom .custom import Custom")
        catalog_py.write_text(text.replace("    Inductor,\n)", "    Inductor,\n    CudaJit,\n)"))
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)

        base = pkg / "rig"  # world-traversable: the storage owner runs the fake runtime from here
        base.mkdir()
        rig = Rig(base, DENSE)
        rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip", "cuda_jit": "ensure"})
        env = {"PYTHONPATH": str(pkg)}
        doc = json.loads(rig.run("plan", "--json", env=env).stdout)
        changes = {c["address"]: c for c in doc["changes"]}
        assert changes["directory:profiles/nv"]["action"] == "create"
        assert changes["stage:cuda_jit"]["action"] == "run", changes["stage:cuda_jit"]["message"]
        assert changes["stage:cuda_jit"]["reason"] == "no_signature"
        assert changes["stage:cuda_jit"]["after"]["kv_cache_dtype"] == "fp8_e4m3"
        assert changes["check:server_flags"]["message"] == "sglang 0.5.23 accepts the flags of cuda_jit"
        proc = rig.run("apply", env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.splitlines()[-1] == ("RESULT_STATUS ok deep_gemm:skipped moe_tune:skipped "
                                                "flashinfer:skipped inductor:skipped cuda_jit:ok")
        assert (rig.root / "profiles/nv/demo-model/signature.json").exists()
        assert [launch["module"] for launch in rig.launches()] == ["sglang.launch_server"]
        assert rig.run("plan", "--detailed-exitcode", env=env).returncode == 0
    finally:
        shutil.rmtree(pkg, ignore_errors=True)
