"""flashinfer/compilation_context.py stand-in: target archs from $FAKE_FLASHINFER_ARCH.

The arch dir is FlashInfer's sorted ``f"{major}{minor}"`` names joined with
"_" (jit/env.py:382-392); "90a" parses to {(9, "0a")}, "80_90a" to
{(8, "0"), (9, "0a")}, "100a" to {(10, "0a")}.
"""
import os


def _parse(arch):
    digits = "".join(ch for ch in arch if ch.isdigit())
    suffix = arch[len(digits):]
    if len(digits) < 2 or not arch.startswith(digits):
        raise ValueError("bad FAKE_FLASHINFER_ARCH component %r" % arch)
    return int(digits[:-1]), digits[-1] + suffix


class CompilationContext:
    COMMON_NVCC_FLAGS = [
        "-DFLASHINFER_ENABLE_FP8_E8M0",
        "-DFLASHINFER_ENABLE_FP4_E2M1",
    ]

    def __init__(self):
        raw = os.environ.get("FAKE_FLASHINFER_ARCH") or "90a"
        self.TARGET_CUDA_ARCHS = {_parse(a) for a in raw.split("_") if a}

    def get_nvcc_flags_list(self, supported_major_versions=None):
        return [
            "-gencode=arch=compute_%d%s,code=sm_%d%s" % (major, minor, major, minor)
            for major, minor in sorted(self.TARGET_CUDA_ARCHS)
            if supported_major_versions is None or major in supported_major_versions
        ] + self.COMMON_NVCC_FLAGS

    def arch_dir(self):
        return "_".join("%d%s" % (major, minor) for major, minor in sorted(self.TARGET_CUDA_ARCHS))
