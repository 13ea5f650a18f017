import os as _os

__version__ = _os.environ.get("FAKE_TORCH_VERSION") or "2.11.0+cu130"
_cuda = _os.environ.get("FAKE_TORCH_CUDA_VERSION", "13.0")
cuda = _cuda or None
