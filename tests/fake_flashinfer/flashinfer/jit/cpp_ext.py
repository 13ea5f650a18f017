"""flashinfer/jit/cpp_ext.py (0.7.2) subset: build.ninja rendering (cpp_ext.py:252-409)
and run_ninja (411-445), with _fake_nvcc.py standing in for nvcc and c++."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import env as jit_env

FAKE_COMPILER = Path(__file__).resolve().parent / "_fake_nvcc.py"


def get_cuda_path():
    return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"


def _quote(s):
    s = str(s)
    if s and all(ch.isalnum() or ch in "/._-+=:," for ch in s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _ninja_path(p):
    return str(p).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def join_multiline(vs):
    return " $\n    ".join(vs)


def object_path(name, source):
    """Absolute object path of one source (cpp_ext.py:356-364)."""
    source = Path(source)
    suffix = ".cuda.o" if source.suffix == ".cu" else ".o"
    return (jit_env.FLASHINFER_JIT_DIR / name / ("%s_%s%s" % (source.parent.name, source.stem, suffix))).resolve()


def generate_ninja_build_for_op(name, sources, extra_cflags, extra_cuda_cflags,
                                extra_ldflags, extra_include_dirs, needs_device_linking=False):
    cuda_home = get_cuda_path()
    compiler = "%s %s" % (_quote(sys.executable or "python3"), _quote(FAKE_COMPILER))
    include_dirs = [jit_env.FLASHINFER_INCLUDE_DIR.resolve(), jit_env.FLASHINFER_CSRC_DIR.resolve()]
    include_dirs += [Path(p).resolve() for p in (extra_include_dirs or [])]
    common_cflags = [
        "-DTVM_FFI_DLL_EXPORT_INCLUDE",
        "-DPy_LIMITED_API=0x03090000",
    ] + ["-I%s" % _quote(d) for d in include_dirs]
    cflags = ["$common_cflags", "-fPIC"] + list(extra_cflags or [])
    cuda_cflags = ["$common_cflags", "--compiler-options=-fPIC", "--expt-relaxed-constexpr"]
    cuda_cflags += [f for f in (extra_cuda_cflags or [])]
    if not any(f.startswith("-gencode=") for f in cuda_cflags):
        from .core import current_compilation_context

        cuda_cflags += current_compilation_context.get_nvcc_flags_list()
    cuda_arch_flags = [f for f in cuda_cflags if f.startswith("-gencode=")]
    ldflags = ["-shared", "-L$cuda_home/lib64", "-L$cuda_home/lib64/stubs", "-lcudart", "-lcuda"]
    ldflags += list(extra_ldflags or [])

    lines = [
        "ninja_required_version = 1.3",
        "name = %s" % name,
        "cuda_home = %s" % cuda_home,
        "cxx = %s --cxx" % compiler,
        "nvcc = %s --nvcc" % compiler,
        "cxx_launcher =",
        "nvcc_launcher =",
        "",
        "common_cflags = " + join_multiline(common_cflags),
        "cflags = " + join_multiline(cflags),
        "post_cflags =",
        "cuda_cflags = " + join_multiline(cuda_cflags),
        "cuda_post_cflags =",
        "cuda_arch_flags = " + join_multiline(cuda_arch_flags),
        "ldflags = " + join_multiline(ldflags),
        "",
        "rule compile",
        "  command = $cxx_launcher $cxx -MMD -MF $out.d $cflags -c $in -o $out $post_cflags",
        "  depfile = $out.d",
        "  deps = gcc",
        "",
        "rule cuda_compile",
        "  command = $nvcc_launcher $nvcc --generate-dependencies-with-compile -MF $out.d $cuda_cflags -c $in -o $out $cuda_post_cflags",
        "  depfile = $out.d",
        "  deps = gcc",
        "",
    ]
    if needs_device_linking:
        lines += ["rule nvcc_link", "  command = $nvcc -shared $cuda_arch_flags $in $ldflags -o $out", ""]
    else:
        lines += ["rule link", "  command = $cxx $in $ldflags -o $out", ""]
    objects = []
    for source in sources:
        source = Path(source)
        cmd = "cuda_compile" if source.suffix == ".cu" else "compile"
        obj = object_path(name, source)
        objects.append(obj)
        lines.append("build %s: %s %s" % (_ninja_path(obj), cmd, _ninja_path(source.resolve())))
    lines.append("")
    output_so = (jit_env.FLASHINFER_JIT_DIR / name / ("%s.so" % name)).resolve()
    link_rule = "nvcc_link" if needs_device_linking else "link"
    lines.append("build %s: %s %s" % (_ninja_path(output_so), link_rule,
                                       " ".join(_ninja_path(o) for o in objects)))
    lines.append("default %s" % _ninja_path(output_so))
    lines.append("")
    return "\n".join(lines)


def _get_num_workers():
    max_jobs = os.environ.get("MAX_JOBS")
    if max_jobs is not None and max_jobs.isdigit():
        return int(max_jobs)
    return None


def run_ninja(workdir, ninja_file, verbose, max_jobs=None):
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FAKE_FLASHINFER_FAIL") == "1":
        raise RuntimeError(
            "Ninja build failed. Ninja output:\n"
            "FAILED: fake compile of %s (FAKE_FLASHINFER_FAIL=1)\n" % workdir.name
        )
    ninja = shutil.which("ninja")
    if ninja is None:
        raise FileNotFoundError("ninja")
    command = [ninja, "-v", "-C", str(workdir.resolve()), "-f", str(Path(ninja_file).resolve())]
    num_workers = max_jobs if max_jobs is not None else _get_num_workers()
    if num_workers is not None:
        command += ["-j", str(num_workers)]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        subprocess.run(
            command,
            stdout=None if verbose else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(workdir.resolve()),
            check=True,
            text=True,
        )
    except subprocess.CalledProcessError as e:
        msg = "Ninja build failed."
        if e.output:
            msg += " Ninja output:\n" + e.output
        raise RuntimeError(msg) from e


def build_without_ninja(name, sources):
    """No ninja on PATH: produce the same outputs directly (no .ninja_log)."""
    python = sys.executable or "python3"
    incs = ["-I%s" % jit_env.FLASHINFER_INCLUDE_DIR.resolve(), "-I%s" % jit_env.FLASHINFER_CSRC_DIR.resolve()]
    objects = []
    for source in sources:
        obj = object_path(name, source)
        subprocess.run([python, str(FAKE_COMPILER), "--nvcc", *incs, "-c", str(Path(source).resolve()),
                        "-o", str(obj)], check=True)
        objects.append(str(obj))
    so = jit_env.FLASHINFER_JIT_DIR / name / ("%s.so" % name)
    subprocess.run([python, str(FAKE_COMPILER), "--cxx", *objects, "-o", str(so)], check=True)
