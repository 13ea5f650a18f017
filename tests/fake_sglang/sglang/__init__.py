"""Fake ``sglang`` package: a stdlib-only test double of SGLang 0.5.23.

Put ``tests/fake_sglang`` on ``PYTHONPATH`` to use it.  What it does, the
environment variables it honours and the files it writes are documented in
``sglang._fake`` (``tests/fake_sglang/sglang/_fake/__init__.py``).

Like the real package (``sglang/__init__.py:10-14`` calling
``srt/environ.py:redirect_third_party_caches``), importing it redirects the
third-party cache variables into ``$SGLANG_CACHE_DIR`` with ``setdefault``, so
values the caller set always win.
"""

import os as _os

# What the caller passed, before the redirect below; the launch log records it.
_ORIGINAL_ENV = dict(_os.environ)

__version__ = _os.environ.get("FAKE_SGLANG_VERSION") or "0.5.23"


def _sglang_cache_dir() -> str:
    return _os.path.expanduser(
        _os.environ.get("SGLANG_CACHE_DIR") or _os.path.join("~", ".cache", "sglang")
    )


def redirect_third_party_caches() -> None:
    """Mirror of ``srt/environ.py:2308-2336`` (setdefault, caller wins)."""
    root = _sglang_cache_dir()
    _os.environ.setdefault("TRITON_CACHE_DIR", _os.path.join(root, "triton"))
    _os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _os.path.join(root, "inductor"))
    _os.environ.setdefault("CUDA_CACHE_PATH", _os.path.join(root, "nv"))
    _os.environ.setdefault("TILELANG_CACHE_DIR", _os.path.join(root, "tilelang"))
    _os.environ.setdefault("FLASHINFER_WORKSPACE_BASE", root)


redirect_third_party_caches()
