"""A fake SGLang runtime on disk: the test double of `sglang`, package
metadata for torch/triton/flashinfer, torch's version.py, FlashInfer's package
data, and an `nvidia-smi` that lists the GPUs a test asks for.

Everything lives under a world-readable temp dir so an unprivileged storage
owner (tests run as root drop to it) can execute it.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FAKE_SGLANG = TESTS / "fake_sglang"
FAKE_FI_DATA = FAKE_SGLANG / "sglang" / "_fake" / "flashinfer_data"

DEFAULT_VERSIONS = {"sglang": "0.5.23", "torch": "2.9.1", "triton": "3.6.0", "flashinfer_python": "0.7.2.post1",
                    "sgl_deep_gemm": "0.2.3.post2"}


def _dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")


def runtime_python() -> str:
    """An interpreter the unprivileged storage owner can run (root's pyenv is private)."""
    if os.geteuid() == 0 and os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return sys.executable


def make_runtime(base: Path, *, versions: dict | None = None, gpus: list | None = None, cuda: str = "12.8",
                 with_sglang: bool = True) -> dict:
    """Create the runtime under `base`; return the env a state's runtime.env needs."""
    versions = {**DEFAULT_VERSIONS, **(versions or {})}
    if not with_sglang:
        versions.pop("sglang")
    gpus = [("NVIDIA H100 80GB HBM3", "9.0", "580.159.04")] if gpus is None else gpus
    site, bin_dir = base / "site", base / "bin"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, version in versions.items():
        _dist(site, name, version)
    (site / "torch").mkdir()
    (site / "torch" / "version.py").write_text(f"__version__ = '{versions['torch']}'\ncuda: str = '{cuda}'\n")
    (site / "flashinfer").mkdir()
    (site / "flashinfer" / "__init__.py").write_text("")
    shutil.copytree(FAKE_FI_DATA, site / "flashinfer" / "data")
    smi = bin_dir / "nvidia-smi"
    lines = "\\n".join(f"{n}, {cc}, {drv}" for n, cc, drv in gpus)
    py = runtime_python()
    smi.write_text(f"#!{py}\nimport sys\nprint('{lines}')\n" if gpus else
                   f"#!{py}\nimport sys\nsys.stderr.write('NVIDIA-SMI has failed: no devices\\n')\n"
                   "sys.exit(9)\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    nvcc = bin_dir / "nvcc"  # only --version is asked of it
    nvcc.write_text(f"#!{py}\nprint('nvcc: NVIDIA (R) Cuda compiler driver\\nCuda compilation tools, "
                    f"release {cuda}, V{cuda}.93')\n")
    nvcc.chmod(0o755)
    for path in [base, *base.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else 0))
    sglang_path = [str(FAKE_SGLANG)] if with_sglang else []
    return {
        "PYTHONPATH": os.pathsep.join(sglang_path + [str(site)]),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "FAKE_FLASHINFER_DATA_DIR": str(site / "flashinfer" / "data"),
        "FAKE_FLASHINFER_VERSION": versions.get("flashinfer_python", "0.7.2.post1"),
        "FAKE_TRITON_VERSION": versions["triton"],
        "FAKE_SGLANG_VERSION": versions.get("sglang", "0.5.23"),
        "FAKE_SGLANG_LOAD_S": "0.1",
        "FAKE_SGLANG_WARMUP_S": "0.05",
    }
