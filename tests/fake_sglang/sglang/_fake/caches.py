"""Writes small but real files into the cache directories, in the real layouts.

Every artifact name is a deterministic hash of what it depends on, so a second
run with the same flags finds everything present (warm) and writes nothing new,
while a run with different flags (kv dtype, head dim, batch sizes, ...) adds
new entries, as the real caches do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

from sglang._fake.common import FakeGPU

FLASHINFER_VERSION_DEFAULT = "0.7.2.post1"
HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_NVCC = os.path.join(HERE, "fake_nvcc.py")


class JitCompileForbidden(RuntimeError):
    """Raised for a cold JIT compile while SGLANG_CRASH_ON_JIT_COMPILE=1."""


def flashinfer_version() -> str:
    return os.environ.get("FAKE_FLASHINFER_VERSION") or FLASHINFER_VERSION_DEFAULT


@dataclass
class CachePaths:
    sglang_cache_dir: str
    triton: str
    inductor: str
    cuda: str
    tilelang: str
    flashinfer_base: str
    flashinfer_workspace: str
    deep_gemm: str
    sglang_jit: str

    @classmethod
    def from_env(cls) -> "CachePaths":
        env = os.environ
        root = os.path.expanduser(env.get("SGLANG_CACHE_DIR") or os.path.join("~", ".cache", "sglang"))
        base = env.get("FLASHINFER_WORKSPACE_BASE") or root
        gpu = FakeGPU.from_env()
        return cls(
            sglang_cache_dir=root,
            triton=env.get("TRITON_CACHE_DIR") or os.path.join(root, "triton"),
            inductor=env.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(root, "inductor"),
            cuda=env.get("CUDA_CACHE_PATH") or os.path.join(root, "nv"),
            tilelang=env.get("TILELANG_CACHE_DIR") or os.path.join(root, "tilelang"),
            flashinfer_base=base,
            flashinfer_workspace=os.path.join(
                base, ".cache", "flashinfer", flashinfer_version(), gpu.arch
            ),
            deep_gemm=env.get("SGLANG_DG_CACHE_DIR") or os.path.join(root, "deep_gemm"),
            sglang_jit=env.get("SGLANG_JIT_CACHE_DIR")
            or os.path.join(os.path.expanduser("~"), ".cache", "sglang", "jit"),
        )

    def as_dict(self) -> Dict[str, str]:
        return asdict(self)

    @property
    def flashinfer_cached_ops(self) -> str:
        return os.path.join(self.flashinfer_workspace, "cached_ops")


# --------------------------------------------------------------------------
# small file helpers
# --------------------------------------------------------------------------
def _sha(*parts: object) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.digest()


def b32_upper(*parts: object) -> str:
    return base64.b32encode(_sha(*parts)).decode().rstrip("=")


def b32_lower(*parts: object) -> str:
    return b32_upper(*parts).lower()


def blob(size: int, *seed: object) -> bytes:
    """Deterministic pseudo-binary content of ``size`` bytes."""
    out = bytearray()
    block = _sha(*seed)
    while len(out) < size:
        out += block
        block = hashlib.sha256(block).digest()
    return bytes(out[:size])


def write_if_missing(path: str, data: bytes) -> bool:
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


def write_if_different(path: str, text: str) -> bool:
    data = text.encode()
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


def _cold_pause() -> None:
    delay = float(os.environ.get("FAKE_SGLANG_JIT_COLD_S") or 0)
    if delay > 0:
        time.sleep(delay)


def _crash_on_jit() -> bool:
    return (os.environ.get("SGLANG_CRASH_ON_JIT_COMPILE") or "").strip().lower() in (
        "1", "true", "yes", "on",
    )


# --------------------------------------------------------------------------
# Triton: TRITON_CACHE_DIR/<52-char base32 hash>/<kernel>.{cubin,ptx,json} + __grp__
# --------------------------------------------------------------------------
def triton_kernel(paths: CachePaths, name: str, *key: object) -> bool:
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import (
        triton_version,
    )

    gpu = FakeGPU.from_env()
    digest = b32_upper("triton", triton_version(), gpu.arch, name, *key)
    d = os.path.join(paths.triton, digest)
    if os.path.exists(os.path.join(d, f"__grp__{name}.json")):
        return False
    meta = {
        "name": name,
        "hash": digest,
        "target": {"backend": "cuda", "arch": gpu.sm, "warp_size": 32},
        "num_warps": 4,
        "num_stages": 3,
        "triton_version": triton_version(),
        "fake_sglang": True,
        "key": [repr(k) for k in key],
    }
    write_if_missing(os.path.join(d, f"{name}.cubin"), blob(2048, digest, "cubin"))
    write_if_missing(
        os.path.join(d, f"{name}.ptx"),
        f"//\n// Generated by fake sglang (triton {triton_version()})\n//\n.version 8.7\n"
        f".target sm_{gpu.sm}a\n.visible .entry {name}()\n{{\n\tret;\n}}\n".encode(),
    )
    write_if_missing(os.path.join(d, f"{name}.json"), json.dumps(meta, indent=1).encode())
    grp = {"child_paths": {f"{name}.{ext}": os.path.join(d, f"{name}.{ext}") for ext in ("cubin", "ptx", "json")}}
    write_if_missing(os.path.join(d, f"__grp__{name}.json"), json.dumps(grp).encode())
    return True


def triton_driver_utils(paths: CachePaths) -> bool:
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import (
        triton_version,
    )

    digest = b32_upper("cuda_utils", triton_version())
    return write_if_missing(
        os.path.join(paths.triton, digest, "cuda_utils.so"), blob(4096, digest, "so")
    )


# --------------------------------------------------------------------------
# Inductor: fxgraph/<k[1:3]>/<k>/<entry>, aotautograd/<k[1:3]>/<k>/entry, <h[1:3]>/c<h>.py
# --------------------------------------------------------------------------
def inductor_graph(paths: CachePaths, label: str, *key: object) -> bool:
    fx_key = "f" + b32_lower("fxgraph", label, *key)
    fx_dir = os.path.join(paths.inductor, "fxgraph", fx_key[1:3], fx_key)
    if os.path.isdir(fx_dir) and os.listdir(fx_dir):
        return False
    entry = b32_lower("entry", fx_key)
    write_if_missing(os.path.join(fx_dir, entry), blob(4096, fx_key, "fx"))
    aot_key = "a" + b32_lower("aotautograd", label, *key)
    write_if_missing(
        os.path.join(paths.inductor, "aotautograd", aot_key[1:3], aot_key, "entry"),
        blob(1024, aot_key),
    )
    code_key = "c" + b32_lower("code", label, *key)
    py = os.path.join(paths.inductor, code_key[1:3], f"{code_key}.py")
    write_if_missing(
        py,
        (
            "# AOT ID: ['0_inference']\n# fake sglang inductor output for "
            f"{label} {key!r}\nfrom torch._inductor.runtime import triton_heuristics\n"
        ).encode(),
    )
    mode = os.environ.get("SGLANG_TORCH_COMPILE_MODE") or "max-autotune-no-cudagraphs"
    if "max-autotune" in mode:
        write_if_missing(
            os.path.join(paths.inductor, code_key[1:3], f"{code_key}.best_config"),
            json.dumps({"XBLOCK": 128, "num_warps": 4, "num_stages": 1, "found_by_coordesc": True}).encode(),
        )
    return True


# --------------------------------------------------------------------------
# CUDA driver cache: CUDA_CACHE_PATH/ComputeCache/{index, <x>/<y>/<hash>}
# --------------------------------------------------------------------------
def cuda_compute_cache(paths: CachePaths, *key: object) -> int:
    root = os.path.join(paths.cuda, "ComputeCache")
    created = 0
    for i in range(3):
        h = hashlib.sha256(repr(("ptx", i) + key).encode()).hexdigest()
        if write_if_missing(os.path.join(root, h[0], h[1:3], h[3:19]), blob(8192, h)):
            created += 1
    write_if_missing(os.path.join(root, "index"), blob(512, "index"))
    return created


# --------------------------------------------------------------------------
# FlashInfer JIT modules (facts §9):
#   $FLASHINFER_WORKSPACE_BASE/.cache/flashinfer/<ver>/<arch>/cached_ops/<name>/
#       build.ninja, *.cuda.o, <name>.so
#   .../<arch>/generated/<name>/*.cu, .../<arch>/flashinfer_jit.log,
#   .../cached_ops/tmp/<name>.lock
# build.ninja is a real ninja file whose outputs live in the module dir and
# whose compiler is fake_nvcc.py; the fake runs `ninja -C <module dir>` like
# FlashInfer does, so `ninja -n -C <module dir>` reports "no work to do" once
# built, work after the package data is touched, and a copied cache still
# names the old directory in build.ninja.
# --------------------------------------------------------------------------
def flashinfer_data_dir() -> str:
    return os.environ.get("FAKE_FLASHINFER_DATA_DIR") or os.path.join(HERE, "flashinfer_data")


def ensure_flashinfer_workspace(paths: CachePaths) -> str:
    """FlashInfer creates its workspace and an empty JIT log when imported."""
    log = os.path.join(paths.flashinfer_workspace, "flashinfer_jit.log")
    if not os.path.exists(log):
        os.makedirs(paths.flashinfer_workspace, exist_ok=True)
        open(log, "a").close()
    return log


def flashinfer_log(paths: CachePaths, message: str, level: str = "INFO", where: str = "core.py:594") -> None:
    ts = time.strftime("%Y-%m-%d %H:%M:%S") + ",%03d" % (int(time.time() * 1000) % 1000)
    line = f"{ts} - {level} - {where} - flashinfer.jit: {message}"
    print(line, file=sys.stderr, flush=True)
    log = ensure_flashinfer_workspace(paths)
    with open(log, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _ninja_escape(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _shell_quote(path: str) -> str:
    return "'" + path.replace("'", "'\"'\"'") + "'"


def _render_build_ninja(module_dir: str, name: str, sources: Sequence[str], include_dir: str, arch: str) -> Tuple[str, List[str]]:
    python = sys.executable or shutil.which("python3") or "python3"
    compiler = f"{_shell_quote(python)} {_shell_quote(FAKE_NVCC)}"
    objects = [os.path.join(module_dir, os.path.basename(s).rsplit(".", 1)[0] + ".cuda.o") for s in sources]
    so = os.path.join(module_dir, f"{name}.so")
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {compiler} --cxx",
        f"nvcc = {compiler} --nvcc",
        f"include_dir = {_shell_quote(include_dir)}",
        "common_cflags = -DTVM_FFI_DLL_EXPORT_INCLUDE -DPy_LIMITED_API=0x03090000 -fPIC -O3 -std=c++17",
        f"cuda_cflags = $common_cflags -I$include_dir --expt-relaxed-constexpr -gencode=arch=compute_{arch},code=sm_{arch} -DFLASHINFER_ENABLE_BF16 -DFLASHINFER_ENABLE_FP8_E4M3 -DFLASHINFER_ENABLE_FP8_E5M2",
        "ldflags = -shared -lcudart -lcuda",
        "",
        "rule compile",
        "  command = $cxx -MMD -MF $out.d $common_cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "",
        "rule cuda_compile",
        "  command = $nvcc --generate-dependencies-with-compile --dependency-output $out.d $cuda_cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "",
        "rule link",
        "  command = $cxx $in $ldflags -o $out",
        "",
    ]
    for src, obj in zip(sources, objects):
        lines.append(f"build {_ninja_escape(obj)}: cuda_compile {_ninja_escape(src)}")
    lines.append("")
    lines.append(f"build {_ninja_escape(so)}: link " + " ".join(_ninja_escape(o) for o in objects))
    lines.append("")
    lines.append(f"default {_ninja_escape(so)}")
    lines.append("")
    return "\n".join(lines), objects


def _fallback_build(module_dir: str, name: str, sources: Sequence[str], objects: Sequence[str], include_dir: str, arch: str) -> None:
    """No ninja on PATH: produce the same outputs directly (no .ninja_log)."""
    python = sys.executable or "python3"
    for src, obj in zip(sources, objects):
        subprocess.run(
            [python, FAKE_NVCC, "--nvcc", f"-I{include_dir}", "-c", src, "-o", obj], check=True
        )
    subprocess.run(
        [python, FAKE_NVCC, "--cxx", *objects, "-o", os.path.join(module_dir, f"{name}.so")],
        check=True,
    )


def flashinfer_module(paths: CachePaths, name: str, kind: str, params: Dict[str, object]) -> bool:
    """Build (or re-validate) one FlashInfer JIT module.  Returns True if cold."""
    gpu = FakeGPU.from_env()
    ensure_flashinfer_workspace(paths)
    module_dir = os.path.join(paths.flashinfer_cached_ops, name)
    so = os.path.join(module_dir, f"{name}.so")
    cold = not os.path.exists(so)
    if cold:
        if _crash_on_jit():
            raise JitCompileForbidden(
                f"JIT compilation of FlashInfer module {name} is required (missing {so}) "
                "but SGLANG_CRASH_ON_JIT_COMPILE=1"
            )
        flashinfer_log(paths, f"Building JIT module {name}; this can take several minutes on first use.")
        _cold_pause()

    gen_dir = os.path.join(paths.flashinfer_workspace, "generated", name)
    data = flashinfer_data_dir()
    include_dir = os.path.join(data, "include")
    header = "\n".join(f"// {k} = {v}" for k, v in sorted(params.items()))
    sources = []
    for src_name in (f"{kind}.cu", f"{kind}_jit_binding.cu"):
        src_path = os.path.join(gen_dir, src_name)
        write_if_different(
            src_path,
            f"// generated by fake flashinfer {flashinfer_version()} for {name}\n{header}\n"
            f"#include <flashinfer/attention/{kind.replace('batch_', '')}.cuh>\n",
        )
        sources.append(src_path)
    text, objects = _render_build_ninja(module_dir, name, sources, include_dir, gpu.arch)
    os.makedirs(module_dir, exist_ok=True)
    write_if_different(os.path.join(module_dir, "build.ninja"), text)
    lock = os.path.join(paths.flashinfer_cached_ops, "tmp", f"{name}.lock")
    write_if_missing(lock, b"")

    ninja = shutil.which("ninja")
    if ninja:
        cmd = [ninja, "-C", module_dir, "-f", "build.ninja"]
        jobs = os.environ.get("MAX_JOBS")
        if jobs:
            cmd += ["-j", jobs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if os.environ.get("FLASHINFER_JIT_VERBOSE") == "1":
            sys.stderr.write(proc.stdout)
        if proc.returncode != 0:
            raise RuntimeError(f"Ninja build failed for {name}:\n{proc.stdout}\n{proc.stderr}")
    elif cold:
        _fallback_build(module_dir, name, sources, objects, include_dir, gpu.arch)
    return cold


# --------------------------------------------------------------------------
# DeepGEMM: $SGLANG_DG_CACHE_DIR/cache/kernel.<type>.<hash>/{kernel.cu,kernel.cubin}
#           $SGLANG_DG_CACHE_DIR/locks/<TYPE>_n{N}_k{K}_g{G}.lock   (facts §8)
# The in-directory layout of DeepGEMM itself is unverified in the facts.
# --------------------------------------------------------------------------
def deep_gemm_kernels(paths: CachePaths, kernel_type: str, n: int, k: int, g: int, block_ms: Iterable[int]) -> Tuple[List[str], bool]:
    gpu = FakeGPU.from_env()
    block_ms = list(block_ms)
    dirs = []
    for block_m in block_ms:
        h = hashlib.sha256(repr((kernel_type, n, k, g, block_m, gpu.arch)).encode()).hexdigest()[:16]
        dirs.append(os.path.join(paths.deep_gemm, "cache", f"kernel.{kernel_type.lower()}.{h}"))
    cold = any(not os.path.exists(os.path.join(d, "kernel.cubin")) for d in dirs)
    if cold and _crash_on_jit():
        raise JitCompileForbidden(
            f"DeepGEMM JIT compilation of <{kernel_type}> N={n}, K={k}, num_groups={g} is "
            f"required (cache miss under {paths.deep_gemm}) but SGLANG_CRASH_ON_JIT_COMPILE=1"
        )
    lock = os.path.join(paths.deep_gemm, "locks", f"{kernel_type}_n{n}_k{k}_g{g}.lock")
    write_if_missing(lock, b"")
    if cold:
        _cold_pause()
    for d, block_m in zip(dirs, block_ms):
        write_if_missing(
            os.path.join(d, "kernel.cu"),
            (
                f"// fake DeepGEMM kernel {kernel_type} N={n} K={k} G={g} BLOCK_M={block_m}\n"
                "#include <deep_gemm/impls/sm90_fp8_gemm_1d2d.cuh>\n"
            ).encode(),
        )
        write_if_missing(os.path.join(d, "kernel.cubin"), blob(4096, d))
    return dirs, cold
