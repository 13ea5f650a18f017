"""Helpers mirroring ``sglang/srt/utils/common.py`` (only what the fake needs)."""

from __future__ import annotations

import os
import re

_HRI_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT])(i?)\s*$")
_SI = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IEC = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def human_readable_int(value: str) -> int:
    """Parse ``8k`` -> 8000 (SI), ``8Ki`` -> 8192 (IEC), ``8192`` -> 8192.

    Facts §1/§13: ``8k`` parses to 8000, not 8192; ``Ki`` means 1024.  Whether
    an upper-case ``K`` without ``i`` is accepted by the real function is not in
    the facts; the fake treats it as SI (1000).  Anything else raises
    ``ValueError`` so argparse reports ``invalid human_readable_int value``.
    """
    text = str(value)
    match = _HRI_RE.match(text)
    if match:
        number, suffix, iec = match.groups()
        mult = (_IEC if iec else _SI)[suffix.lower()]
        return int(float(number) * mult)
    return int(text.strip())


def get_device_name(device_id: int = 0) -> str:
    """``torch.cuda.get_device_name()`` of the fake GPU (env ``FAKE_SGLANG_GPU_NAME``)."""
    return os.environ.get("FAKE_SGLANG_GPU_NAME") or "NVIDIA H100 80GB HBM3"


def is_hip() -> bool:
    return False
