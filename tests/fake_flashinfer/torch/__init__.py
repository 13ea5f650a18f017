"""A tiny stand-in for ``torch``: just what sglprep's FlashInfer build script and
the fake FlashInfer package touch (dtypes, ``device``, ``cuda``, ``version``).

Only ever on sys.path in tests (PYTHONPATH=tests/fake_flashinfer). Stdlib only.

Environment:
  FAKE_TORCH_VERSION           torch.__version__ (default 2.11.0+cu130)
  FAKE_TORCH_CUDA_VERSION      torch.version.cuda (default 13.0; empty = None)
  FAKE_TORCH_CUDA_CAPABILITY   e.g. "9.0": one visible GPU of that capability;
                               unset/empty: no GPU (torch.cuda.is_available() False)
"""
import os as _os


class dtype:
    __slots__ = ("_name", "itemsize", "is_floating_point")

    def __init__(self, name, itemsize, is_floating_point):
        self._name = name
        self.itemsize = itemsize
        self.is_floating_point = is_floating_point

    def __repr__(self):
        return "torch." + self._name

    __str__ = __repr__



float32 = dtype("float32", 4, True)
float16 = half = dtype("float16", 2, True)
bfloat16 = dtype("bfloat16", 2, True)
float8_e4m3fn = dtype("float8_e4m3fn", 1, True)
float8_e5m2 = dtype("float8_e5m2", 1, True)
int8 = dtype("int8", 1, False)
uint8 = dtype("uint8", 1, False)
int32 = dtype("int32", 4, False)
uint32 = dtype("uint32", 4, False)
int64 = dtype("int64", 8, False)
uint64 = dtype("uint64", 8, False)


class device:
    def __init__(self, type, index=None):
        if isinstance(type, device):
            type, index = type.type, type.index
        if isinstance(type, str) and ":" in type:
            type, _, idx = type.partition(":")
            index = int(idx)
        self.type = type
        self.index = index

    def __repr__(self):
        if self.index is None:
            return "device(type=%r)" % self.type
        return "device(type=%r, index=%d)" % (self.type, self.index)

    def __eq__(self, other):
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self):
        return hash((self.type, self.index))


__version__ = _os.environ.get("FAKE_TORCH_VERSION") or "2.11.0+cu130"

from . import cuda  # noqa: E402
from . import version  # noqa: E402
