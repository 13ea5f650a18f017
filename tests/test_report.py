"""Terminal output: the live stage progress."""
from __future__ import annotations

import io
import time

from reconcile.report_text import StageProgress


def test_live_progress_names_the_phase_and_redraws_every_second():
    out = io.StringIO()
    progress = StageProgress(out, live=True)
    progress("inductor", "readiness", 0.0)
    time.sleep(2.2)
    progress("inductor", "generate", 2.2)
    time.sleep(0.3)
    progress.close()
    text = out.getvalue()
    assert "inductor · waiting for readiness · 2s" in text  # the clock moved without a new phase
    assert "inductor · generating" in text


def test_plain_progress_is_one_line_per_phase():
    out = io.StringIO()
    progress = StageProgress(out, live=False)
    for phase in ("launch", "launch", "readiness"):
        progress("flashinfer", phase, 0.0)
    progress.close()
    assert out.getvalue() == "sglprep: flashinfer: launch\nsglprep: flashinfer: readiness\n"
