"""Fake ``python -m sglang.compile_deep_gemm`` (see ``sglang._fake`` for behaviour and knobs)."""

import sys

if __name__ == "__main__":
    from sglang._fake.entry import compile_deep_gemm_main

    sys.exit(compile_deep_gemm_main(sys.argv[1:]))
