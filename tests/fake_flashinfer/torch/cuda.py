"""torch.cuda stand-in: one GPU of capability $FAKE_TORCH_CUDA_CAPABILITY, or none."""
import os as _os


def _capability():
    raw = (_os.environ.get("FAKE_TORCH_CUDA_CAPABILITY") or "").strip()
    if not raw:
        return None
    major, _, minor = raw.partition(".")
    return int(major), int(minor or 0)


def is_available():
    return _capability() is not None


def device_count():
    return 1 if is_available() else 0


def current_device():
    if not is_available():
        raise RuntimeError("Found no NVIDIA driver on your system.")
    return 0


def get_device_capability(device=None):
    cap = _capability()
    if cap is None:
        raise RuntimeError("Found no NVIDIA driver on your system.")
    return cap


def is_current_stream_capturing():
    return False
