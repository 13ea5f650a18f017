"""Facts about the SGLang runtime: one read-only probe process, once per run.

The probe runs in the runtime's Python (`runtime.python` on this host, or the
container's, through the same `Prober` seam) and never imports torch, sglang or
FlashInfer: versions come from package metadata, CUDA from torch's
`version.py`, the GPUs from `nvidia-smi`, so a probe costs tens of
milliseconds, not the seconds an `import torch` takes. It also reports what
silently invalidates a FlashInfer JIT cache: the package's data directory and
the newest mtime under it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

PROBE_TIMEOUT_S = 60

# Runs inside the runtime's interpreter: stdlib only, Python 3.8+, no imports of
# the packages it describes.
PROBE_SCRIPT = r'''
import json, os, re, shutil, subprocess, sys
from importlib import metadata, util

def dist_version(*names):
    for name in names:
        try:
            return metadata.version(name)
        except Exception:
            pass
    return None

def package_dir(module):
    try:
        spec = util.find_spec(module)
    except Exception:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]

out = {"python": sys.version.split()[0], "executable": sys.executable}
out["packages"] = {
    "sglang": dist_version("sglang"),
    "torch": dist_version("torch"),
    "triton": dist_version("triton"),
    "flashinfer": dist_version("flashinfer-python", "flashinfer"),
    "deep_gemm": dist_version("sgl-deep-gemm", "deep-gemm"),
    "sglang_kernel": dist_version("sglang-kernel", "sgl-kernel"),
    "cuda_runtime": dist_version("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime"),
}
out["sglang_dir"] = package_dir("sglang")
torch_dir = package_dir("torch")
out["torch_cuda"] = None
if torch_dir:
    try:
        text = open(os.path.join(torch_dir, "version.py")).read()
        m = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        out["torch_cuda"] = m.group(1) if m else None
    except OSError:
        pass
fi_dir = package_dir("flashinfer")
out["flashinfer_data"] = None
if fi_dir:
    data = os.path.join(fi_dir, "data")
    newest, count = 0.0, 0
    for root, dirs, files in os.walk(data):
        for f in files:
            try:
                mt = os.stat(os.path.join(root, f)).st_mtime
            except OSError:
                continue
            count += 1
            newest = max(newest, mt)
    out["flashinfer_data"] = {"dir": data, "newest_mtime": newest, "files": count}
out["gpus"], out["gpu_error"] = [], None
smi = shutil.which("nvidia-smi")
if smi is None:
    out["gpu_error"] = "nvidia-smi not found"
else:
    try:
        proc = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            out["gpu_error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["nvidia-smi failed"]
            out["gpu_error"] = out["gpu_error"][0]
        for line in proc.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 3:
                out["gpus"].append({"name": parts[0], "compute_cap": parts[1], "driver": parts[2]})
    except Exception as exc:
        out["gpu_error"] = "nvidia-smi: %s" % exc
nvcc = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc") or None
out["nvcc"], out["nvcc_version"] = nvcc, None
if nvcc:
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"release (\d+\.\d+)", text)
        out["nvcc_version"] = m.group(1) if m else None
    except Exception:
        pass
out["ninja"] = shutil.which("ninja")
print(json.dumps(out))
'''


class GPU(NamedTuple):
    name: str
    compute_cap: str  # "9.0"
    driver: str


class RuntimeFacts(NamedTuple):
    """What the probe saw. `status` is `ok` or `unavailable`; `problem` says why."""

    status: str
    problem: str = ""
    python: str = ""
    packages: dict = {}
    torch_cuda: str = ""
    sglang_dir: str = ""
    flashinfer_data_dir: str = ""
    flashinfer_data_newest_mtime: float = 0.0
    gpus: tuple = ()
    gpu_error: str = ""
    nvcc: str = ""
    nvcc_version: str = ""
    ninja: str = ""

    def version(self, package: str) -> str:
        return self.packages.get(package) or ""

    def signature(self) -> dict:
        """Runtime keys of every stage signature."""
        gpu = self.gpus[0] if self.gpus else GPU("", "", "")
        return {
            "device_name": gpu.name,
            "compute_capability": "sm_" + gpu.compute_cap.replace(".", "") if gpu.compute_cap else "",
            "gpu_count": len(self.gpus),
            "driver_version": gpu.driver,
            "cuda": self.torch_cuda,
            "torch_version": self.version("torch"),
            "triton_version": self.version("triton"),
            "sglang_version": self.version("sglang"),
        }


# A prober runs argv in the runtime and returns (returncode, stdout, stderr).
Prober = Callable[[list], tuple]

# Passed through from sglprep's own environment into the runtime: what a GPU
# process needs to find its driver, toolkit and libraries. Nothing else of the
# invoker's environment (root's HOME, its tokens and cloud credentials) reaches
# a process that runs as the storage owner.
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH",
                   "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                   "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VIRTUAL_ENV")


def owner_environment(environ, home: str, extra_env: dict) -> dict:
    """The environment of every process that runs as the storage owner, at
    plan time (probe, flag check, ninja -n) and apply time (stages) alike:
    the pass-through variables, the owner's HOME (XDG dirs follow it), then
    runtime.env."""
    env = {k: environ[k] for k in PASSTHROUGH_ENV if k in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = home
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env)
    return env


def local_prober(env: dict | None = None, uid: int | None = None, gid: int | None = None) -> Prober:
    """Runs probes on this host; as `uid:gid` when root, so the probe sees
    what the stages (which run as the storage owner) will see."""
    import os
    import subprocess

    kwargs = {}
    if uid is not None and os.geteuid() == 0 and uid != 0:
        kwargs = {"user": uid, "group": gid, "extra_groups": []}

    def run(argv: list) -> tuple:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env,
                                  cwd="/", **kwargs)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: not found"
        except PermissionError:
            return 126, "", f"{argv[0]}: permission denied"
        except subprocess.TimeoutExpired:
            return 124, "", f"probe timed out after {PROBE_TIMEOUT_S}s"
        return proc.returncode, proc.stdout, proc.stderr
    return run


def probe_runtime(python: str, prober: Prober) -> RuntimeFacts:
    import json

    rc, out, err = prober([python, "-B", "-c", PROBE_SCRIPT])
    if rc != 0:
        last = (err or out).strip().splitlines()[-1:] or [f"exit {rc}"]
        return RuntimeFacts(status="unavailable", problem=f"runtime python {python!r} failed: {last[0]}")
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return RuntimeFacts(status="unavailable", problem=f"runtime probe printed no JSON: {out[-200:]!r}")
    fi = data.get("flashinfer_data") or {}
    facts = RuntimeFacts(
        status="ok",
        python=data.get("python", ""),
        packages={k: v for k, v in (data.get("packages") or {}).items() if v},
        torch_cuda=data.get("torch_cuda") or "",
        sglang_dir=data.get("sglang_dir") or "",
        flashinfer_data_dir=fi.get("dir", ""),
        flashinfer_data_newest_mtime=float(fi.get("newest_mtime") or 0.0),
        gpus=tuple(GPU(g["name"], g["compute_cap"], g["driver"]) for g in data.get("gpus") or ()),
        gpu_error=data.get("gpu_error") or "",
        nvcc=data.get("nvcc") or "",
        nvcc_version=data.get("nvcc_version") or "",
        ninja=data.get("ninja") or "",
    )
    if not facts.gpus:
        return facts._replace(status="unavailable",
                              problem=f"no GPU visible in the runtime ({facts.gpu_error or 'nvidia-smi listed none'})")
    return facts
