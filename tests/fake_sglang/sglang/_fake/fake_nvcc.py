"""Stand-in for nvcc / c++ in the fake FlashInfer build.ninja files.

    fake_nvcc.py --nvcc [--dependency-output DEP] [-I DIR]... -c SRC -o OBJ
    fake_nvcc.py --cxx [-MF DEP] OBJ... -o LIB

Writes a small deterministic "object" / "shared library" whose content hashes
its inputs, plus a gcc-style depfile listing the headers the source includes
(resolved under -I, or -I$include_dir from build.ninja), so ninja re-runs it
when the package's headers are touched, like the real FlashInfer build.
Stdlib only; runs as a plain script (no PYTHONPATH needed).
"""

import hashlib
import os
import re
import sys

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def _escape_dep(path):
    return path.replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")


def main(argv):
    out = None
    dep = None
    compile_only = False
    includes = []
    inputs = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o":
            out = argv[i + 1]
            i += 2
            continue
        if a in ("--dependency-output", "-MF"):
            dep = argv[i + 1]
            i += 2
            continue
        if a == "-c":
            compile_only = True
        elif a.startswith("-I"):
            includes.append(a[2:])
        elif not a.startswith("-") and os.path.exists(a):
            inputs.append(a)
        i += 1
    if out is None:
        print("fake_nvcc: no -o given", file=sys.stderr)
        return 2
    h = hashlib.sha256()
    headers = []
    for path in inputs:
        with open(path, "rb") as f:
            data = f.read()
        h.update(data)
        if compile_only:
            for inc in _INCLUDE_RE.findall(data.decode("utf-8", "replace")):
                for d in includes:
                    cand = os.path.join(d, inc)
                    if os.path.exists(cand):
                        headers.append(os.path.abspath(cand))
                        with open(cand, "rb") as f:
                            h.update(f.read())
                        break
    digest = h.digest()
    magic = b"\x7fELF\x02\x01\x01\x00" + b"fake-sglang" + (b"-obj" if compile_only else b"-lib")
    body = bytearray(magic)
    while len(body) < (1024 if compile_only else 4096):
        body += digest
        digest = hashlib.sha256(digest).digest()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(bytes(body))
    os.replace(tmp, out)
    if dep:
        with open(dep, "w") as f:
            f.write(_escape_dep(out) + ": " + " ".join(_escape_dep(p) for p in inputs + headers) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
