"""flashinfer.jit (0.7.2) subset: the re-exports of jit/__init__.py:20-70 the build script uses."""
from . import env as env
from .attention import gen_batch_decode_module as gen_batch_decode_module
from .attention import gen_batch_prefill_module as gen_batch_prefill_module
from .attention import get_batch_decode_uri as get_batch_decode_uri
from .attention import get_batch_prefill_uri as get_batch_prefill_uri
from .core import JitSpec as JitSpec
from .core import JitSpecNvcc as JitSpecNvcc
from .core import MissingJITCacheError as MissingJITCacheError
from .core import current_compilation_context as current_compilation_context
from .core import gen_jit_spec as gen_jit_spec
from .core import sm90a_nvcc_flags as sm90a_nvcc_flags
