"""Fake FlashInfer (test double of flashinfer-python 0.7.2.post1), stdlib + fake torch.

It implements only the surface sglprep's direct FlashInfer build script
(reconcile/runtime_flashinfer.BUILD_SCRIPT) uses, with the real module names
and the real on-disk JIT layout:

  $FLASHINFER_WORKSPACE_BASE/.cache/flashinfer/<version>/<arch>/
      flashinfer_jit.log
      generated/<module>/*.cu, *.inc                 (generated sources)
      cached_ops/tmp/<module>.lock                   (per-module lock)
      cached_ops/<module>/build.ninja, *.cuda.o, <module>.so

Environment (beyond FlashInfer's own FLASHINFER_WORKSPACE_BASE, MAX_JOBS,
FLASHINFER_JIT_VERBOSE, FLASHINFER_DISABLE_JIT, FLASHINFER_LOGGING_LEVEL):
  FAKE_FLASHINFER_VERSION   __version__ and the cache path (default 0.7.2.post1)
  FAKE_FLASHINFER_ARCH      the arch dir, e.g. 90a, 80_90a (default 90a)
  FAKE_FLASHINFER_BUILD_S   seconds to sleep per cold build
  FAKE_FLASHINFER_FAIL=1    every build raises (after writing build.ninja)
"""
import os as _os

__version__ = _os.environ.get("FAKE_FLASHINFER_VERSION") or "0.7.2.post1"
__git_commit__ = "fake"
