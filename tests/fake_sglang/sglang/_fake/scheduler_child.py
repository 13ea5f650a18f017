"""Fake scheduler subprocess (run as a script, argv[0] = ``sglang::scheduler_TP0``).

It only exists so callers can check process-tree teardown:

* argv[0] is ``sglang::scheduler_TP0`` (``ps -o args``) and, on Linux, the
  comm is set to ``sglang::schedul`` (15-char limit), like setproctitle does;
* like the real scheduler (``kill_itself_when_parent_died``) it asks the
  kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), unless
  ``FAKE_SGLANG_ORPHAN_CHILD=1``: then it survives a SIGKILL of the parent
  alone and only dies from a signal to the process group (or to itself);
* SIGTERM ends it with exit 0; with ``FAKE_SGLANG_FAIL=ignore_sigterm`` it
  ignores SIGTERM/SIGINT and only SIGKILL works.
"""

import os
import signal
import sys
import time


def _prctl(option, arg):
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0)
    except Exception:
        return -1


def main() -> int:
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    fails = os.environ.get("FAKE_SGLANG_FAIL", "")
    ignore = "ignore_sigterm" in fails
    orphan = os.environ.get("FAKE_SGLANG_ORPHAN_CHILD", "").lower() in ("1", "true", "yes", "on")

    if sys.platform.startswith("linux"):
        import ctypes

        _prctl(15, ctypes.c_char_p(b"sglang::schedul"))  # PR_SET_NAME
        if not orphan:
            _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    if ignore:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides

    while True:
        if not orphan and os.getppid() != parent:
            return 0  # parent gone (non-Linux fallback for PDEATHSIG)
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
