"""Small subset of ``sglang.srt.utils`` used by the fake."""

from sglang.srt.utils.common import get_device_name, human_readable_int, is_hip  # noqa: F401
