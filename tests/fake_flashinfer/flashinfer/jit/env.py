"""flashinfer/jit/env.py (0.7.2) paths: env.py:66-71, 238, 382-410."""
import os
import pathlib

from .. import __version__ as flashinfer_version
from ..compilation_context import CompilationContext

FLASHINFER_BASE_DIR = pathlib.Path(
    os.getenv("FLASHINFER_WORKSPACE_BASE", pathlib.Path.home().as_posix())
)
FLASHINFER_CACHE_DIR = FLASHINFER_BASE_DIR / ".cache" / "flashinfer"
_package_root = pathlib.Path(__file__).resolve().parents[1]
FLASHINFER_AOT_DIR = _package_root / "data" / "aot"


def _get_workspace_dir_name():
    return FLASHINFER_CACHE_DIR / flashinfer_version / CompilationContext().arch_dir()


FLASHINFER_WORKSPACE_DIR = _get_workspace_dir_name()
FLASHINFER_JIT_DIR = FLASHINFER_WORKSPACE_DIR / "cached_ops"
FLASHINFER_GEN_SRC_DIR = FLASHINFER_WORKSPACE_DIR / "generated"
FLASHINFER_DATA = _package_root / "data"
FLASHINFER_INCLUDE_DIR = _package_root / "data" / "include"
FLASHINFER_CSRC_DIR = _package_root / "data" / "csrc"


def get_aot_path(name):
    return FLASHINFER_AOT_DIR / name / ("%s.so" % name)


def get_aot_artifacts(name):
    path = get_aot_path(name)
    return (path,) if path.exists() else ()
