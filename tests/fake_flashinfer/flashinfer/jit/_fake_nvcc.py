"""Stand-in for nvcc / c++ in the fake FlashInfer's build.ninja files.

    _fake_nvcc.py --nvcc [-MF DEP] [-I DIR]... [flags] -c SRC -o OBJ
    _fake_nvcc.py --cxx OBJ... [flags] -o LIB

An "object" / "shared library" is a small file with a magic header followed
by a hash of its inputs (the source and every header it includes,
recursively: "x" next to the including file, then <x> / "x" under each -I).
With -MF it writes a gcc-style depfile listing those headers, so ninja
rebuilds when the package's data/include headers are touched, as with the real
FlashInfer build. Stdlib only; runs as a plain script.
"""
import hashlib
import os
import re
import sys

MAGIC_OBJ = b"\x7fELF\x02\x01\x01\x00fake-flashinfer-obj\n"
MAGIC_LIB = b"\x7fELF\x02\x01\x01\x00fake-flashinfer-lib\n"
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def _escape_dep(path):
    return path.replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")


def _resolve(inc, quote, including, includes):
    dirs = ([os.path.dirname(including)] if quote == '"' else []) + includes
    for d in dirs:
        cand = os.path.join(d, inc)
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    return None


def _headers(src, includes):
    seen = []
    todo = [src]
    while todo:
        path = todo.pop(0)
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
        for quote, inc in _INCLUDE_RE.findall(text):
            found = _resolve(inc, quote, path, includes)
            if found and found not in seen and found != os.path.abspath(src):
                seen.append(found)
                todo.append(found)
    return seen


def main(argv):
    out = dep = None
    compile_only = False
    includes, inputs = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "-MF", "--dependency-output") and i + 1 < len(argv):
            if a == "-o":
                out = argv[i + 1]
            else:
                dep = argv[i + 1]
            i += 2
            continue
        if a == "-c":
            compile_only = True
        elif a in ("-I", "-isystem") and i + 1 < len(argv):
            includes.append(argv[i + 1])
            i += 2
            continue
        elif a.startswith("-I"):
            includes.append(a[2:])
        elif not a.startswith("-") and os.path.isfile(a):
            inputs.append(a)
        i += 1
    if out is None:
        sys.stderr.write("fake nvcc: no -o given\n")
        return 2
    h = hashlib.sha256()
    headers = []
    for path in inputs:
        with open(path, "rb") as f:
            h.update(f.read())
        if compile_only:
            for hdr in _headers(path, includes):
                headers.append(hdr)
                with open(hdr, "rb") as f:
                    h.update(f.read())
    body = bytearray(MAGIC_OBJ if compile_only else MAGIC_LIB)
    digest = h.digest()
    while len(body) < (1024 if compile_only else 4096):
        body += digest
        digest = hashlib.sha256(digest).digest()
    tmp = "%s.tmp.%d" % (out, os.getpid())
    with open(tmp, "wb") as f:
        f.write(bytes(body))
    os.replace(tmp, out)
    if dep:
        with open(dep, "w") as f:
            f.write(_escape_dep(out) + ": " + " ".join(_escape_dep(p) for p in inputs + headers) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
