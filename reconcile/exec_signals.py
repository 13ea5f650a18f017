"""Signals during an apply: SIGINT, SIGTERM and SIGHUP become `Interrupted`
in the main thread, so the running stage tears its processes down, records
`error_type: interrupted`, and apply journals the run before it exits. While
apply journals (`defer()`), a second signal is remembered, not raised: the
stage JSON and prep_result.json are written whole either way."""
from __future__ import annotations

import signal

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state = {"deferred": False, "pending": None, "saved": {}}


def _handler(signum, frame) -> None:
    if _state["deferred"]:
        _state["pending"] = _state["pending"] or signum
        return
    raise Interrupted(signum)


def install() -> None:
    """Route the three signals to `Interrupted` (main thread only)."""
    _state.update(deferred=False, pending=None)
    for sig in SIGNALS:
        try:
            _state["saved"][sig] = signal.signal(sig, _handler)
        except (ValueError, OSError):  # not the main thread: leave the defaults
            pass


def defer() -> None:
    """From now on a signal is remembered, not raised (journaling)."""
    _state["deferred"] = True


def pending() -> int | None:
    """A signal that arrived while deferred (the exit code follows it)."""
    return _state["pending"]


def restore() -> None:
    for sig, old in _state["saved"].items():
        try:
            signal.signal(sig, old)
        except (ValueError, OSError):
            pass
    _state.update(deferred=False, saved={})
