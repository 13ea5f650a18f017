"""Relocate a FlashInfer JIT build tree (ninja module dirs) to a new path.

A FlashInfer JIT cache holds one directory per module, each with
`build.ninja`, `.ninja_log`, `.ninja_deps`, objects, depfiles and a `.so`.
`build.ninja` names absolute paths (the module dir, FlashInfer's sources and
includes), so copying the tree to another storage root, or installing the
package at another path, makes ninja rebuild everything:

* the command of every edge changes, and ninja compares a hash of it with the
  one recorded in `.ninja_log` (MurmurHash64A for log v5/v6, rapidhash for
  v7);
* `.ninja_deps` (the binary deps log) names the old paths;
* mtimes after unpacking may make outputs look older than their inputs, and
  ninja also compares the mtime recorded in the deps log and in the build log
  with the inputs' mtimes.

`relocate_build_tree` rewrites all four kinds of file for every module dir and
restamps the mtimes so that `ninja -n -C <module>` reports no work. It reads
and checks every module first and raises `RelocateError` (one line) before
writing anything when something is malformed; every write is atomic.

Stdlib only.
"""
from __future__ import annotations

import os
import re
import stat
import struct
import time

from .journal import fsync_dir, temp_name

__all__ = [
    "RelocateError",
    "relocate_build_tree",
    "murmurhash64a",
    "rapidhash",
    "command_hash",
    "edge_commands",
]

_M64 = (1 << 64) - 1


class RelocateError(Exception):
    """Anything malformed or unsafe in the tree; the message is one line."""


# ---------------------------------------------------------------------------
# hashes (ninja src/build_log.cc; rapidhash from src/third_party/rapidhash)

def murmurhash64a(data: bytes) -> int:
    """ninja's MurmurHash64A (seed 0xDECAFBADDECAFBAD), build log v5/v6."""
    m = 0xC6A4A7935BD1E995
    r = 47
    n = len(data)
    h = (0xDECAFBADDECAFBAD ^ (n * m)) & _M64
    body = n - (n % 8)
    for (k,) in struct.iter_unpack("<Q", data[:body]):
        k = (k * m) & _M64
        k ^= k >> r
        k = (k * m) & _M64
        h ^= k
        h = (h * m) & _M64
    tail = data[body:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * m) & _M64
    h ^= h >> r
    h = (h * m) & _M64
    h ^= h >> r
    return h


_RAPID_SEED = 0xBDD89AA982704029
_RS0, _RS1, _RS2 = 0x2D358DCCAA6C78A5, 0x8BB84B93962EACC9, 0x4B33A62ED433D4A3


def _rmix(a: int, b: int) -> int:
    r = a * b
    return (r & _M64) ^ (r >> 64)


def rapidhash(data: bytes) -> int:
    """rapidhash (FAST, UNROLLED, little endian) as ninja >= 1.13 uses for
    build log v7. Ported from ninja's third_party/rapidhash.h."""
    n = len(data)

    def r64(i):
        return int.from_bytes(data[i:i + 8], "little")

    def r32(i):
        return int.from_bytes(data[i:i + 4], "little")

    seed = _RAPID_SEED ^ _rmix(_RAPID_SEED ^ _RS0, _RS1) ^ n
    if n <= 16:
        if n >= 4:
            plast = n - 4
            a = (r32(0) << 32) | r32(plast)
            delta = (n & 24) >> (n >> 3)
            b = (r32(delta) << 32) | r32(plast - delta)
        elif n > 0:
            a = (data[0] << 56) | (data[n >> 1] << 32) | data[n - 1]
            b = 0
        else:
            a = b = 0
    else:
        p, i = 0, n
        if i > 48:
            see1 = see2 = seed
            while i >= 96:
                seed = _rmix(r64(p) ^ _RS0, r64(p + 8) ^ seed)
                see1 = _rmix(r64(p + 16) ^ _RS1, r64(p + 24) ^ see1)
                see2 = _rmix(r64(p + 32) ^ _RS2, r64(p + 40) ^ see2)
                seed = _rmix(r64(p + 48) ^ _RS0, r64(p + 56) ^ seed)
                see1 = _rmix(r64(p + 64) ^ _RS1, r64(p + 72) ^ see1)
                see2 = _rmix(r64(p + 80) ^ _RS2, r64(p + 88) ^ see2)
                p += 96
                i -= 96
            if i >= 48:
                seed = _rmix(r64(p) ^ _RS0, r64(p + 8) ^ seed)
                see1 = _rmix(r64(p + 16) ^ _RS1, r64(p + 24) ^ see1)
                see2 = _rmix(r64(p + 32) ^ _RS2, r64(p + 40) ^ see2)
                p += 48
                i -= 48
            seed ^= see1 ^ see2
        if i > 16:
            seed = _rmix(r64(p) ^ _RS2, r64(p + 8) ^ seed ^ _RS1)
            if i > 32:
                seed = _rmix(r64(p + 16) ^ _RS2, r64(p + 24) ^ seed)
        a = r64(p + i - 16)
        b = r64(p + i - 8)
    a ^= _RS1
    b ^= seed
    prod = a * b
    a, b = prod & _M64, prod >> 64
    return _rmix(a ^ _RS0 ^ n, b ^ _RS1)


_LOG_VERSIONS = {5: murmurhash64a, 6: murmurhash64a, 7: rapidhash}


def command_hash(command: str, log_version: int = 5) -> int:
    """The hash ninja records in `.ninja_log` of the given version."""
    fn = _LOG_VERSIONS.get(log_version)
    if fn is None:
        raise RelocateError(f"unsupported .ninja_log version {log_version}")
    return fn(os.fsencode(command))


# ---------------------------------------------------------------------------
# build.ninja (ninja src/lexer.in.cc, manifest_parser.cc, eval_env.cc, graph.cc)

_VAR_SIMPLE = re.compile(r"[a-zA-Z0-9_-]+")
_VAR_BRACED = re.compile(r"\{([a-zA-Z0-9_.-]+)\}")


def _logical_lines(text: str) -> list[tuple[bool, str]]:
    """(indented, line) with comments dropped and `$\\n` continuations joined;
    other `$` escapes are kept for the evaluator."""
    out: list[tuple[bool, str]] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#" and not "".join(buf).strip(" "):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            buf = []
            continue
        if c == "$" and i + 1 < n:
            nc = text[i + 1]
            if nc == "\n" or (nc == "\r" and text.startswith("\n", i + 2)):
                i += 2 if nc == "\n" else 3
                while i < n and text[i] == " ":
                    i += 1
                continue
            buf.append(c + nc)
            i += 2
            continue
        if c == "\n":
            line = "".join(buf)
            buf = []
            i += 1
            if line.endswith("\r"):
                line = line[:-1]
            if line.strip(" "):
                out.append((line.startswith(" "), line.lstrip(" ")))
            continue
        buf.append(c)
        i += 1
    line = "".join(buf).rstrip("\r")
    if line.strip(" "):
        out.append((line.startswith(" "), line.lstrip(" ")))
    return out


def _parse_eval(s: str, i: int = 0, path: bool = False) -> tuple[list, int]:
    """Parse an eval string from s[i:]; a path stops at unescaped ' ', ':', '|'.
    Returns ([(is_var, text), ...], end)."""
    toks: list[tuple[bool, str]] = []
    lit: list[str] = []
    n = len(s)
    while i < n:
        c = s[i]
        if path and c in " :|":
            break
        if c != "$":
            lit.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise RelocateError("build.ninja: dangling '$' at end of line")
        nc = s[i + 1]
        if nc in "$ :":
            lit.append(nc)
            i += 2
            continue
        m = _VAR_BRACED.match(s, i + 1) if nc == "{" else _VAR_SIMPLE.match(s, i + 1)
        if not m:
            raise RelocateError(f"build.ninja: bad '$' escape near {s[i:i + 12]!r}")
        if lit:
            toks.append((False, "".join(lit)))
            lit = []
        toks.append((True, m.group(1) if nc == "{" else m.group(0)))
        i = m.end()
    if lit:
        toks.append((False, "".join(lit)))
    return toks, i


def _evaluate(toks: list, lookup) -> str:
    return "".join(lookup(t) if is_var else t for is_var, t in toks)


def _canon(path: str) -> str:
    """ninja's CanonicalizePath (POSIX part): drop '.', '//', fold 'x/..'."""
    if not path:
        raise RelocateError("build.ninja: empty path")
    absolute = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == ".." and parts and parts[-1] != "..":
            parts.pop()
            continue
        if comp == ".." and absolute and not parts:
            continue
        parts.append(comp)
    res = "/".join(parts)
    if absolute:
        return "/" + res
    return res or "."


_SHELL_SAFE = re.compile(r"[A-Za-z0-9_+\-./]*\Z")


def _shell_escape(path: str) -> str:
    if _SHELL_SAFE.match(path):
        return path
    return "'" + path.replace("'", "'\\''") + "'"


class _Edge:
    __slots__ = ("rule", "outs", "n_explicit_outs", "ins", "n_explicit_ins",
                 "n_implicit_ins", "bindings")

    def __init__(self):
        self.rule = ""
        self.outs: list[str] = []
        self.n_explicit_outs = 0
        self.ins: list[str] = []
        self.n_explicit_ins = 0
        self.n_implicit_ins = 0
        self.bindings: dict[str, str] | None = None


class Manifest:
    """Enough of a build.ninja to evaluate each edge's command."""

    def __init__(self, text: str):
        self.vars: dict[str, str] = {}
        self.rules: dict[str, dict[str, list]] = {"phony": {}}
        self.edges: list[_Edge] = []
        self._parse(text)

    def _file_lookup(self, var: str) -> str:
        return self.vars.get(var, "")

    def _parse(self, text: str) -> None:
        lines = _logical_lines(text)
        i = 0
        while i < len(lines):
            indented, line = lines[i]
            i += 1
            block: list[str] = []
            while i < len(lines) and lines[i][0]:
                block.append(lines[i][1])
                i += 1
            if indented:
                raise RelocateError("build.ninja: unexpected indented line")
            word, _, rest = line.partition(" ")
            rest = rest.lstrip(" ")
            if word == "rule":
                name = rest.strip()
                if name in self.rules:
                    raise RelocateError(f"build.ninja: duplicate rule {name!r}")
                self.rules[name] = {k: v for k, v in (self._binding(b) for b in block)}
            elif word == "build":
                self._parse_build(rest, block)
            elif word in ("pool", "default"):
                continue
            elif word in ("include", "subninja"):
                raise RelocateError(f"build.ninja: '{word}' is not supported")
            else:
                key, toks = self._binding(line)
                if block:
                    raise RelocateError("build.ninja: indented line after a variable")
                self.vars[key] = _evaluate(toks, self._file_lookup)

    @staticmethod
    def _binding(line: str) -> tuple[str, list]:
        key, eq, value = line.partition("=")
        key = key.strip(" ")
        if not eq or not _VAR_BRACED.fullmatch("{" + key + "}"):
            raise RelocateError(f"build.ninja: expected 'name = value', got {line[:60]!r}")
        toks, _ = _parse_eval(value.lstrip(" "))
        return key, toks

    def _parse_build(self, rest: str, block: list[str]) -> None:
        # tokens: ('p', evaltoks) | ('op', ':' '|' '||' '|@')
        toks: list[tuple[str, object]] = []
        i, n = 0, len(rest)
        while i < n:
            c = rest[i]
            if c == " ":
                i += 1
            elif c == ":":
                toks.append(("op", ":"))
                i += 1
            elif c == "|":
                if rest.startswith("||", i):
                    toks.append(("op", "||"))
                    i += 2
                elif rest.startswith("|@", i):
                    toks.append(("op", "|@"))
                    i += 2
                else:
                    toks.append(("op", "|"))
                    i += 1
            else:
                ev, i = _parse_eval(rest, i, path=True)
                toks.append(("p", ev))
        groups: dict[str, list] = {"out": [], "iout": [], "in": [], "iin": [], "oin": [], "val": []}
        section, rule = "out", None
        for kind, val in toks:
            if kind == "op":
                if val == ":":
                    if section not in ("out", "iout") or rule is not None:
                        raise RelocateError("build.ninja: misplaced ':' in build line")
                    section = "rule"
                elif val == "|":
                    section = {"out": "iout", "in": "iin"}.get(section, "")
                elif val == "||":
                    section = "oin" if section in ("in", "iin") else ""
                else:
                    section = "val" if section in ("in", "iin", "oin") else ""
                if not section:
                    raise RelocateError(f"build.ninja: misplaced {val!r} in build line")
            elif section == "rule":
                rule = "".join(t for _, t in val)
                section = "in"
            else:
                groups[section].append(val)
        if rule is None:
            raise RelocateError("build.ninja: build line without ':' rule")
        if rule not in self.rules:
            raise RelocateError(f"build.ninja: unknown rule {rule!r}")
        edge = _Edge()
        edge.rule = rule
        lookup = self._file_lookup
        if block:
            edge.bindings = {}
            bindings = edge.bindings

            def lookup(var, _b=bindings):
                return _b[var] if var in _b else self.vars.get(var, "")

            for b in block:
                key, toks_ = self._binding(b)
                bindings[key] = _evaluate(toks_, lookup)

        def paths(group):
            return [_canon(_evaluate(p, lookup)) for p in groups[group]]

        outs, iouts = paths("out"), paths("iout")
        ins, iins = paths("in"), paths("iin")
        edge.outs = outs + iouts
        edge.n_explicit_outs = len(outs)
        edge.ins = ins + iins
        edge.n_explicit_ins = len(ins)
        edge.n_implicit_ins = len(iins)
        if not edge.outs:
            raise RelocateError("build.ninja: build line without outputs")
        self.edges.append(edge)

    def _edge_lookup(self, edge: _Edge, var: str, stack: tuple) -> str:
        if var in ("in", "in_newline"):
            sep = " " if var == "in" else "\n"
            return sep.join(_shell_escape(p) for p in edge.ins[:edge.n_explicit_ins])
        if var == "out":
            return " ".join(_shell_escape(p) for p in edge.outs[:edge.n_explicit_outs])
        # BindingEnv::LookupWithFallback: the edge's env (the file env itself
        # when the edge has no bindings), then the rule, then the parent.
        scope = edge.bindings if edge.bindings is not None else self.vars
        if var in scope:
            return scope[var]
        ev = self.rules[edge.rule].get(var)
        if ev is not None:
            if var in stack:
                raise RelocateError(f"build.ninja: cycle in rule variables at {var!r}")
            return _evaluate(ev, lambda v: self._edge_lookup(edge, v, stack + (var,)))
        if edge.bindings is not None:
            return self.vars.get(var, "")
        return ""

    def edge_command(self, edge: _Edge) -> str:
        """Edge::EvaluateCommand(incl_rsp_file=true): what ninja hashes."""
        cmd = self._edge_lookup(edge, "command", ())
        rsp = self._edge_lookup(edge, "rspfile_content", ())
        if rsp:
            cmd += ";rspfile=" + rsp
        return cmd

    def commands(self) -> dict[str, str]:
        """output path -> command, for every non-phony edge."""
        out: dict[str, str] = {}
        for edge in self.edges:
            if edge.rule == "phony":
                continue
            cmd = self.edge_command(edge)
            for o in edge.outs:
                out[o] = cmd
        return out


def edge_commands(build_ninja_text: str) -> dict[str, str]:
    """Map each output of a build.ninja text to the command ninja would hash."""
    return Manifest(build_ninja_text).commands()


# ---------------------------------------------------------------------------
# prefix rewriting

_NOT_BOUNDARY = "A-Za-z0-9._+~@%,=#$-"


class _Mover:
    def __init__(self, moves):
        pairs = []
        for old, new in moves:
            if not isinstance(old, str) or not isinstance(new, str):
                raise RelocateError("moves must be (old, new) string pairs")
            if not (os.path.isabs(old) and os.path.isabs(new)):
                raise RelocateError(f"moves must be absolute paths: {old!r} -> {new!r}")
            old, new = os.path.normpath(old), os.path.normpath(new)
            if old == "/":
                raise RelocateError("refusing to move the root directory '/'")
            pairs.append((old, new))
        if len({o for o, _ in pairs}) != len(pairs):
            raise RelocateError("moves name the same old prefix twice")
        pairs.sort(key=lambda p: len(p[0]), reverse=True)
        self.pairs = pairs
        self.map = dict(pairs)
        boundary = rf"(?=/|\Z|[^{_NOT_BOUNDARY}])"
        if pairs:
            self.text_re = re.compile("(" + "|".join(re.escape(o) for o, _ in pairs) + ")" + boundary)
        else:
            self.text_re = None
        # build.ninja may spell a prefix with ninja escapes ($ , $:, $$)
        esc = {}
        for o, nw in pairs:
            eo = o.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")
            if eo != o:
                esc[eo] = nw.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")
        self.esc_map = esc
        self.esc_re = (re.compile("(" + "|".join(re.escape(o) for o in sorted(esc, key=len, reverse=True))
                                  + ")" + boundary) if esc else None)

    def text(self, s: str) -> str:
        if self.esc_re is not None:
            s = self.esc_re.sub(lambda m: self.esc_map[m.group(1)], s)
        if self.text_re is None:
            return s
        return self.text_re.sub(lambda m: self.map[m.group(1)], s)

    def path(self, p: str) -> str:
        """Rewrite one whole path (prefix must be at its start)."""
        for old, new in self.pairs:
            if p == old or p.startswith(old + "/"):
                return new + p[len(old):]
        return p


# ---------------------------------------------------------------------------
# .ninja_log

_LOG_HEADER = re.compile(r"# ninja log v(\d+)\n")


def _parse_log(data: bytes, where: str) -> tuple[int, dict[str, list]]:
    text = os.fsdecode(data)
    m = _LOG_HEADER.match(text)
    if not m:
        raise RelocateError(f"{where}: not a ninja log (bad header)")
    version = int(m.group(1))
    if version not in _LOG_VERSIONS:
        raise RelocateError(f"{where}: unsupported ninja log version {version}")
    body = text[m.end():]
    if body and not body.endswith("\n"):
        raise RelocateError(f"{where}: truncated last line")
    entries: dict[str, list] = {}
    for n, line in enumerate(body.split("\n")[:-1], start=2):
        fields = line.split("\t")
        if len(fields) != 5:
            raise RelocateError(f"{where}:{n}: expected 5 tab-separated fields")
        start, end, mtime, output, h = fields
        try:
            rec = [int(start), int(end), int(mtime), output, int(h, 16)]
        except ValueError:
            raise RelocateError(f"{where}:{n}: bad number in log entry") from None
        entries.pop(output, None)  # keep the latest, in order of last write
        entries[output] = rec
    return version, entries


def _format_log(version: int, entries) -> bytes:
    lines = [f"# ninja log v{version}\n"]
    for start, end, mtime, output, h in entries:
        lines.append(f"{start}\t{end}\t{mtime}\t{output}\t{h:x}\n")
    return os.fsencode("".join(lines))


# ---------------------------------------------------------------------------
# .ninja_deps (ninja src/deps_log.cc, version 4)

_DEPS_SIG = b"# ninjadeps\n"
_DEPS_VERSION = 4
_MAX_RECORD = (1 << 19) - 1


def _parse_deps(data: bytes, where: str) -> tuple[list[str], list[list]]:
    """-> (paths by id, deps records [out_id, mtime, [ids]]) in file order."""
    if not data.startswith(_DEPS_SIG) or len(data) < len(_DEPS_SIG) + 4:
        raise RelocateError(f"{where}: not a ninja deps log (bad header)")
    (version,) = struct.unpack_from("<i", data, len(_DEPS_SIG))
    if version != _DEPS_VERSION:
        raise RelocateError(f"{where}: unsupported deps log version {version}")
    pos = len(_DEPS_SIG) + 4
    paths: list[str] = []
    records: list[list] = []
    n = len(data)
    while pos < n:
        if pos + 4 > n:
            raise RelocateError(f"{where}: truncated record header at byte {pos}")
        (size,) = struct.unpack_from("<I", data, pos)
        is_deps = bool(size >> 31)
        size &= 0x7FFFFFFF
        pos += 4
        if size > _MAX_RECORD or pos + size > n:
            raise RelocateError(f"{where}: truncated or oversized record at byte {pos - 4}")
        rec = data[pos:pos + size]
        pos += size
        if is_deps:
            if size % 4 or size < 12:
                raise RelocateError(f"{where}: malformed deps record at byte {pos - size - 4}")
            ints = struct.unpack(f"<i2I{size // 4 - 3}i", rec)
            out_id, lo, hi, ids = ints[0], ints[1], ints[2], list(ints[3:])
            for x in [out_id] + ids:
                if not 0 <= x < len(paths):
                    raise RelocateError(f"{where}: deps record names unknown node id {x}")
            records.append([out_id, (hi << 32) | lo, ids])
        else:
            if size < 5 or size % 4:
                raise RelocateError(f"{where}: malformed path record at byte {pos - size - 4}")
            (checksum,) = struct.unpack_from("<I", rec, size - 4)
            if (~checksum) & 0xFFFFFFFF != len(paths):
                raise RelocateError(f"{where}: path record checksum does not match id {len(paths)}")
            raw = rec[:size - 4]
            stripped = raw.rstrip(b"\0")
            if len(raw) - len(stripped) > 3 or not stripped:
                raise RelocateError(f"{where}: malformed path record padding")
            paths.append(os.fsdecode(stripped))
    return paths, records


def _format_deps(paths: list[str], records: list[list], where: str) -> bytes:
    out = [_DEPS_SIG, struct.pack("<i", _DEPS_VERSION)]
    # path records first (ids are assigned in order; a deps record may only
    # name ids already defined, which holds when all paths come first)
    for node_id, p in enumerate(paths):
        b = os.fsencode(p)
        pad = (4 - len(b) % 4) % 4
        size = len(b) + pad + 4
        if size > _MAX_RECORD:
            raise RelocateError(f"{where}: path too long for the deps log: {p[:60]!r}")
        out.append(struct.pack("<I", size) + b + b"\0" * pad + struct.pack("<I", (~node_id) & 0xFFFFFFFF))
    for out_id, mtime, ids in records:
        size = 4 * (3 + len(ids))
        if size > _MAX_RECORD:
            raise RelocateError(f"{where}: deps record too large")
        out.append(struct.pack(f"<Ii2I{len(ids)}i", size | 0x80000000, out_id,
                               mtime & 0xFFFFFFFF, (mtime >> 32) & 0xFFFFFFFF, *ids))
    return b"".join(out)


# ---------------------------------------------------------------------------
# file system helpers

def _lstat_regular(path: str, where: str, required: bool = False):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if required:
            raise RelocateError(f"{where}: missing") from None
        return None
    if not stat.S_ISREG(st.st_mode):
        raise RelocateError(f"{where}: not a regular file (symlink or special); refusing")
    return st


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    """Replace `path` (still a regular file) with `data`, keeping its mode:
    a temp file named as journal names them (O_EXCL|O_NOFOLLOW; a `.tmp`
    name neither manifests nor bundles carry), fsync, rename."""
    tmp = temp_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, stat.S_IMODE(mode))
            os.fsync(fd)
        finally:
            os.close(fd)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise RelocateError(f"{path}: changed into a non-regular file; refusing")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------
# the relocation

class _Module:
    def __init__(self, path: str, mover: _Mover):
        self.path = path
        self.mover = mover
        self.real = os.path.realpath(path)
        self.writes: list[tuple[str, bytes, int]] = []  # (path, data, mode)
        self.log: tuple | None = None        # (path, mode, version, entries)
        self.deps: tuple | None = None       # (path, mode, paths, records)
        self.manifest: Manifest | None = None
        self.files: list[str] = []           # regular files to restamp
        self.nested: set[str] = set()

    def inside(self, p: str) -> bool:
        a = os.path.normpath(os.path.join(self.path, p))
        return any(a == root or a.startswith(root.rstrip("/") + "/") for root in (self.path, self.real))

    def abspath(self, p: str) -> str:
        return os.path.normpath(os.path.join(self.path, p))


def _find_modules(root: str) -> list[str]:
    mods = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_walk_error):
        # os.walk lists symlinked dirs among dirnames but does not descend
        dirnames[:] = [d for d in dirnames if stat.S_ISDIR(os.lstat(os.path.join(dirpath, d)).st_mode)]
        if "build.ninja" in filenames:
            st = os.lstat(os.path.join(dirpath, "build.ninja"))
            if stat.S_ISREG(st.st_mode):
                mods.append(dirpath)
    return sorted(mods)


def _walk_error(err: OSError) -> None:
    raise RelocateError(f"cannot read {err.filename}: {err.strerror}")


def _plan_module(mod: _Module, mover: _Mover, all_mods: set[str]) -> None:
    # files of this module (not of a nested module), no symlinks followed
    for dirpath, dirnames, filenames in os.walk(mod.path, followlinks=False, onerror=_walk_error):
        keep = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if stat.S_ISDIR(os.lstat(full).st_mode) and full not in all_mods:
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            full = os.path.join(dirpath, f)
            if stat.S_ISREG(os.lstat(full).st_mode) and ".relocate-" not in f:
                mod.files.append(full)

    bn = os.path.join(mod.path, "build.ninja")
    st = _lstat_regular(bn, bn, required=True)
    try:
        old_text = _read(bn).decode("utf-8", "surrogateescape")
    except OSError as e:
        raise RelocateError(f"{bn}: {e.strerror}") from None
    new_text = mover.text(old_text)
    mod.manifest = Manifest(new_text)
    if new_text != old_text:
        mod.writes.append((bn, new_text.encode("utf-8", "surrogateescape"), st.st_mode))

    for full in mod.files:
        if full.endswith(".d"):
            st_d = _lstat_regular(full, full)
            old = os.fsdecode(_read(full))
            new = mover.text(old)
            if new != old:
                mod.writes.append((full, os.fsencode(new), st_d.st_mode))

    logp = os.path.join(mod.path, ".ninja_log")
    st_l = _lstat_regular(logp, logp)
    if st_l is not None:
        version, entries = _parse_log(_read(logp), logp)
        mod.log = (logp, st_l.st_mode, version, entries)

    depsp = os.path.join(mod.path, ".ninja_deps")
    st_p = _lstat_regular(depsp, depsp)
    if st_p is not None:
        paths, records = _parse_deps(_read(depsp), depsp)
        new_paths = [_canon(mover.path(p)) if p.startswith("/") else p for p in paths]
        if len(set(new_paths)) != len(new_paths):
            raise RelocateError(f"{depsp}: two paths would become one after the move")
        mod.deps = (depsp, st_p.st_mode, new_paths, records)


def _external_max_mtime(mod: _Module) -> int:
    """Newest mtime (ns) of an edge input outside the module dir."""
    inputs: set[str] = set()
    for edge in mod.manifest.edges:
        inputs.update(edge.ins[:edge.n_explicit_ins + edge.n_implicit_ins])
    if mod.deps is not None:
        _, _, paths, records = mod.deps
        for _, _, ids in records:
            inputs.update(paths[i] for i in ids)
    newest = 0
    for p in inputs:
        if mod.inside(p):
            continue
        try:
            newest = max(newest, os.stat(mod.abspath(p)).st_mtime_ns)
        except OSError:
            continue
    return newest


def _apply_module(mod: _Module, summary: dict) -> None:
    for path, data, mode in mod.writes:
        _atomic_write(path, data, mode)
        summary["files_rewritten"] += 1

    # T: not older than any input outside the module (those we do not touch)
    want = max(time.time_ns(), _external_max_mtime(mod))
    probe = os.path.join(mod.path, "build.ninja")
    for _ in range(3):
        os.utime(probe, ns=(want, want), follow_symlinks=False)
        stamp = os.lstat(probe).st_mtime_ns  # as the file system stores it
        if stamp >= want:
            break
        want += 1_000_000_000
    else:
        raise RelocateError(f"{mod.path}: file system does not keep the mtime we set")

    commands = mod.manifest.commands()
    if mod.log is not None:
        logp, mode, version, entries = mod.log
        rows = []
        for start, end, mtime, output, h in entries.values():
            if output.startswith("/"):
                output = _canon(mod.mover.path(output))
            cmd = commands.get(output)
            if cmd is not None:
                h = command_hash(cmd, version)
            if mod.inside(output):
                mtime = stamp
            rows.append((start, end, mtime, output, h))
        seen: dict[str, tuple] = {}
        for r in rows:
            seen.pop(r[3], None)
            seen[r[3]] = r
        _atomic_write(logp, _format_log(version, seen.values()), mode)
        summary["files_rewritten"] += 1
        summary["log_entries"] += len(seen)
    if mod.deps is not None:
        depsp, mode, paths, records = mod.deps
        for rec in records:
            if mod.inside(paths[rec[0]]):
                rec[1] = stamp
        _atomic_write(depsp, _format_deps(paths, records, depsp), mode)
        summary["files_rewritten"] += 1
        summary["deps_records"] += len(records)

    files = set(mod.files) | {os.path.join(mod.path, n) for n in (".ninja_log", ".ninja_deps", "build.ninja")}
    for f in sorted(files):
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            os.utime(f, ns=(stamp, stamp), follow_symlinks=False)
    fsync_dir(mod.path)


def relocate_build_tree(directory: str, moves: list[tuple[str, str]]) -> dict:
    """Rewrite every ninja module dir under `directory` for `moves`
    [(old_prefix, new_prefix), ...] and restamp mtimes so ninja sees the
    tree as up to date. Returns {"modules", "files_rewritten", "log_entries",
    "deps_records"}. Raises RelocateError (one line) when something is
    malformed; nothing is written unless every module parsed cleanly."""
    try:
        return _relocate(directory, moves)
    except RelocateError:
        raise
    except OSError as e:
        raise RelocateError(f"{e.filename or directory}: {e.strerror or e}") from None
    except (ValueError, struct.error, UnicodeError) as e:
        raise RelocateError(f"{directory}: {e}") from None


def _relocate(directory: str, moves) -> dict:
    mover = _Mover(moves)
    root = os.path.abspath(directory)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise RelocateError(f"{directory}: not a directory (symlinks are not followed)")
    paths = _find_modules(root)
    all_mods = set(paths)
    mods = []
    for p in paths:  # read and check everything before writing anything
        mod = _Module(p, mover)
        _plan_module(mod, mover, all_mods)
        mods.append(mod)
    summary = {"modules": len(mods), "files_rewritten": 0, "log_entries": 0, "deps_records": 0}
    for mod in mods:
        _apply_module(mod, summary)
    return summary
