"""flashinfer/jit/core.py (0.7.2) subset: logger (53-98), JitSpec / JitSpecNvcc with
build_and_load (336-358, 458-598), gen_jit_spec (653-818), get_tmpdir (821-826).

Same control flow as the real thing: try_load() trusts only an AOT artifact
(data/aot/<name>/<name>.so); otherwise, under the per-module lock
cached_ops/tmp/<name>.lock, build() rewrites build.ninja (only if different),
logs "Building JIT module ..." only when the .so is missing, and runs ninja in
the module dir, so a warm module costs a no-op ninja run, and touched package
headers or a moved cache dir cause a silent rebuild.
"""
import abc
import dataclasses
import fcntl
import functools
import logging
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

from . import env as jit_env
from .cpp_ext import build_without_ninja, generate_ninja_build_for_op, run_ninja
from .utils import write_if_different
from ..compilation_context import CompilationContext


class MissingJITCacheError(RuntimeError):
    def __init__(self, message, spec=None):
        self.spec = spec
        super().__init__(message)


class FlashInferJITLogger(logging.Logger):
    def __init__(self, name):
        super().__init__(name)
        self.setLevel(os.getenv("FLASHINFER_LOGGING_LEVEL", "info").upper())
        self.addHandler(logging.StreamHandler())
        jit_env.FLASHINFER_WORKSPACE_DIR.mkdir(parents=True, exist_ok=True)
        log_path = jit_env.FLASHINFER_WORKSPACE_DIR / "flashinfer_jit.log"
        if not os.path.exists(log_path):
            with open(log_path, "w"):
                pass
        self.addHandler(logging.FileHandler(log_path))
        fmt = "%(asctime)s - %(levelname)s - %(filename)s:%(lineno)d - flashinfer.jit: %(message)s"
        for handler in self.handlers:
            handler.setFormatter(logging.Formatter(fmt))

    def info_once(self, msg, *args):
        self._print_once(self.info, msg, *args)

    @functools.lru_cache(maxsize=None)
    def _print_once(self, log_method, msg, *args):
        log_method(msg, *args, stacklevel=3)


logger = FlashInferJITLogger("flashinfer.jit")

current_compilation_context = CompilationContext()


def check_cuda_arch():
    eligible = False
    for major, minor in current_compilation_context.TARGET_CUDA_ARCHS:
        if major >= 8 or (major == 7 and minor.isdigit() and int(minor) >= 5):
            eligible = True
    if not eligible:
        raise RuntimeError(
            "FlashInfer requires GPUs with sm75 or higher. "
            "Detected TARGET_CUDA_ARCHS=%s." % sorted(current_compilation_context.TARGET_CUDA_ARCHS)
        )


common_nvcc_flags = ["-DFLASHINFER_ENABLE_FP8_E8M0", "-DFLASHINFER_ENABLE_FP4_E2M1"]
sm90a_nvcc_flags = [
    "-gencode=arch=compute_90a,code=sm_90a",
    "-DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED",
] + common_nvcc_flags


class FileLock:
    """filelock.FileLock stand-in (advisory flock on the lock file)."""

    def __init__(self, path, thread_local=False):
        self.path = Path(path)
        self._fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        return False


def get_tmpdir():
    tmpdir = jit_env.FLASHINFER_JIT_DIR / "tmp"
    if not tmpdir.exists():
        tmpdir.mkdir(parents=True, exist_ok=True)
    return tmpdir


class JitSpec(abc.ABC):
    name: str

    @property
    @abc.abstractmethod
    def lock_path(self): ...

    @abc.abstractmethod
    def try_load(self): ...

    @abc.abstractmethod
    def build(self): ...

    @abc.abstractmethod
    def load(self): ...

    def build_and_load(self):
        cached = self.try_load()
        if cached is not None:
            return cached
        with FileLock(self.lock_path, thread_local=False):
            cached = self.try_load()
            if cached is not None:
                return cached
            if os.environ.get("FLASHINFER_DISABLE_JIT"):
                raise MissingJITCacheError(
                    "JIT compilation is disabled via FLASHINFER_DISABLE_JIT "
                    "environment variable, but the required module is not "
                    "found in the JIT cache. Please add the missing module "
                    "to the JIT cache build configuration.",
                    spec=self,
                )
            self.build()
            return self.load()


def _load_fake_library(path):
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if b"fake-flashinfer-lib" not in head:
        raise RuntimeError("%s: not a (fake) FlashInfer module" % path)

    def _unavailable(*args, **kwargs):
        raise RuntimeError("fake FlashInfer module %s has no kernels" % path.name)

    return SimpleNamespace(path=str(path), plan=_unavailable, run=_unavailable,
                           paged_run=_unavailable, ragged_run=_unavailable)


@dataclasses.dataclass
class JitSpecNvcc(JitSpec):
    name: str
    sources: List[Path]
    extra_cflags: Optional[List[str]]
    extra_cuda_cflags: Optional[List[str]]
    extra_ldflags: Optional[List[str]]
    extra_include_dirs: Optional[List[Path]]
    is_class: bool = False
    needs_device_linking: bool = False

    @property
    def ninja_path(self):
        return jit_env.FLASHINFER_JIT_DIR / self.name / "build.ninja"

    @property
    def build_dir(self):
        return jit_env.FLASHINFER_JIT_DIR / self.name

    @property
    def jit_library_path(self):
        return jit_env.FLASHINFER_JIT_DIR / self.name / ("%s.so" % self.name)

    @property
    def aot_path(self):
        return jit_env.get_aot_path(self.name)

    @property
    def aot_artifacts(self):
        return jit_env.get_aot_artifacts(self.name)

    @property
    def is_aot(self):
        return bool(self.aot_artifacts)

    def get_library_path(self):
        if self.is_aot:
            return self.aot_path
        return self.jit_library_path

    @property
    def is_compiled(self):
        return self.get_library_path().exists()

    @property
    def lock_path(self):
        return get_tmpdir() / ("%s.lock" % self.name)

    def write_ninja(self):
        self.build_dir.mkdir(parents=True, exist_ok=True)
        content = generate_ninja_build_for_op(
            name=self.name,
            sources=self.sources,
            extra_cflags=self.extra_cflags,
            extra_cuda_cflags=self.extra_cuda_cflags,
            extra_ldflags=self.extra_ldflags,
            extra_include_dirs=self.extra_include_dirs,
            needs_device_linking=self.needs_device_linking,
        )
        write_if_different(self.ninja_path, content)

    @property
    def is_ninja_generated(self):
        return self.ninja_path.exists()

    def try_load(self):
        for path in self.aot_artifacts:
            try:
                return self.load(path)
            except Exception as e:
                logger.warning("Failed to load AOT artifact %s: %s. Falling back to JIT build." % (path, e))
        return None

    def build(self, verbose=None, need_lock=False):
        if os.environ.get("FLASHINFER_DISABLE_JIT"):
            raise MissingJITCacheError(
                "JIT compilation is disabled via FLASHINFER_DISABLE_JIT environment variable, "
                "but the required module is not found in the JIT cache. "
                "Please add the missing module to the JIT cache build configuration.",
                spec=self,
            )
        if verbose is None:
            verbose = os.environ.get("FLASHINFER_JIT_VERBOSE", "0") == "1"
        lock = FileLock(self.lock_path) if need_lock else _NullLock()
        with lock:
            is_cold_build = not self.jit_library_path.exists()
            self.write_ninja()
            if is_cold_build:
                logger.info_once(
                    "Building JIT module %s; this can take several minutes on first use.",
                    self.name,
                )
                delay = float(os.environ.get("FAKE_FLASHINFER_BUILD_S") or 0)
                if delay > 0:
                    time.sleep(delay)
            if shutil.which("ninja") is None and os.environ.get("FAKE_FLASHINFER_FAIL") != "1":
                if is_cold_build:
                    build_without_ninja(self.name, self.sources)
                return
            run_ninja(self.build_dir, self.ninja_path, verbose)

    def load(self, so_path=None):
        return _load_fake_library(so_path or self.jit_library_path)


class _NullLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def gen_jit_spec(name, sources, extra_cflags=None, extra_cuda_cflags=None, extra_ldflags=None,
                 extra_include_paths=None, needs_device_linking=False, use_fast_math=True):
    check_cuda_arch()
    cflags = ["-std=c++17", "-Wno-switch-bool", "-DNDEBUG", "-O3"] + list(extra_cflags or [])
    cuda_cflags = [
        "-std=c++17",
        "--threads=%s" % (os.environ.get("FLASHINFER_NVCC_THREADS") or "1"),
        "-use_fast_math" if use_fast_math else "",
        "-Xfatbin=-compress-all",
        "--compress-mode=size",
        "-DFLASHINFER_ENABLE_F16",
        "-DFLASHINFER_ENABLE_BF16",
        "-DFLASHINFER_ENABLE_FP8_E4M3",
        "-DFLASHINFER_ENABLE_FP8_E5M2",
        "-DNDEBUG",
        "-O3",
    ]
    cuda_cflags = [f for f in cuda_cflags if f] + list(extra_cuda_cflags or [])
    return JitSpecNvcc(
        name=name,
        sources=[Path(x) for x in sources],
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_cflags,
        extra_ldflags=extra_ldflags,
        extra_include_dirs=[Path(x) for x in extra_include_paths] if extra_include_paths else None,
        needs_device_linking=needs_device_linking,
    )
