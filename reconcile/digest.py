"""sha256 without loading OpenSSL.

`hashlib` initialises OpenSSL on import (about 3 ms, a few percent of a
converged `sglprep plan`); CPython's builtin implementation is the same
algorithm. Fall back to hashlib where the builtin is named differently.
"""
try:
    from _sha256 import sha256  # CPython <= 3.11
except ImportError:  # pragma: no cover - newer CPython
    try:
        from _sha2 import sha256  # CPython >= 3.12
    except ImportError:
        from hashlib import sha256


def sha256_hex(data: bytes) -> str:
    return "sha256:" + sha256(data).hexdigest()
