"""Run sglprep, dying (as kill -9 would: os._exit, no cleanup, no flush)
at its Nth mutating filesystem call. Test-only: it patches the `os` and
`shutil` functions sglprep's own code calls, so the product carries no
crash hook.

    python tests/crash_at.py N [sglprep args...]   # N=0: count the calls, print MUTATIONS=<n> at exit
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys

MUTATING = ("mkdir", "makedirs", "replace", "rename", "link", "unlink", "rmdir", "symlink", "open")
_count = [0]
_target = int(sys.argv[1])


def _wrap(module, name):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        if name == "open" and not _writes(args, kwargs):
            return real(*args, **kwargs)
        _count[0] += 1
        if _count[0] == _target:
            os._exit(137)
        return real(*args, **kwargs)
    setattr(module, name, wrapper)


def _writes(args, kwargs) -> bool:
    flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


for _name in MUTATING:
    _wrap(os, _name)
_wrap(shutil, "rmtree")
if _target == 0:
    atexit.register(lambda: print(f"MUTATIONS={_count[0]}", file=sys.stderr))

sys.argv = ["sglprep", *sys.argv[2:]]
from reconcile.cli import main  # noqa: E402

sys.exit(main())
