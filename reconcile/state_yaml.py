"""YAML loading that remembers where every value came from.

State files and inventories are parsed into plain Python values plus a map
from each key path to its origin (file, line) and, for scalars, the text as
written. Validation then reports `file:line: key: message` and can quote what
the user typed (`got 'on'`) rather than what YAML 1.1 made of it (`True`).
"""
from __future__ import annotations

from typing import NamedTuple
from typing import Any

import yaml

from .errors import InputError

KeyPath = tuple  # of str (mapping keys) and int (sequence indices)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()


class Origin(NamedTuple):
    file: str
    line: int


class Located:
    """A parsed document: `value` plus where each part of it came from."""

    __slots__ = ("value", "file", "origins", "raw")

    def __init__(self, value: Any, file: str, origins: dict | None = None, raw: dict | None = None):
        self.value = value
        self.file = file
        self.origins = origins if origins is not None else {}  # KeyPath -> Origin
        self.raw = raw if raw is not None else {}  # KeyPath -> scalar text as written

    def origin(self, path: KeyPath) -> Origin:
        """Origin of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[:-1]
        return self.origins.get((), Origin(self.file, 1))


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_file(path: str, display: str | None = None) -> Located:
    import os
    import stat

    display = display or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(display, None, None, "file not found") from None
    except OSError as exc:
        raise InputError(display, None, None, f"cannot read: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InputError(display, None, None, "not a regular file")
            if st.st_size > MAX_BYTES:
                raise InputError(display, None, None, f"larger than {MAX_BYTES >> 20} MiB: not a state file")
            text = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(display, None, None, f"cannot read: {exc.strerror}") from None
    return load_text(text, display)


MAX_BYTES = 4 << 20  # state files and inventories are a few KiB


MAX_DEPTH = 64  # a state file nests a few levels; deeper is an accident or an attack
MAX_VALUES = 100_000  # aliases may not expand a document past this many values


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_text(text: bytes | str, display: str) -> Located:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(display, line, None, f"YAML syntax error: {_one_line(problem)}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, control chars, bad UTF-8)
        data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        line = data[: max(0, exc.position)].count(b"\n") + 1
        raise InputError(display, line, None, f"YAML cannot read character {exc.character!r} at byte "
                         f"{exc.position} ({_one_line(exc.reason)})") from None
    except yaml.YAMLError as exc:
        raise InputError(display, None, None, f"YAML syntax error: {_one_line(exc)}") from None
    except RecursionError:
        raise InputError(display, None, None, "YAML nested too deeply") from None
    doc = Located(value=None, file=display)
    if node is None:
        doc.value = {}
        doc.origins[()] = Origin(display, 1)
        return doc
    doc.value = _build(node, (), doc, set(), [0])
    return doc


def _build(node: yaml.Node, path: KeyPath, doc: Located, active: set, count: list) -> Any:
    line = node.start_mark.line + 1
    if id(node) in active:
        raise InputError(doc.file, line, dotted(path) or None, "recursive YAML alias (it contains itself)")
    if len(path) > MAX_DEPTH:
        raise InputError(doc.file, line, dotted(path[:MAX_DEPTH]), f"nested deeper than {MAX_DEPTH} levels")
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise InputError(doc.file, line, dotted(path) or None,
                         f"more than {MAX_VALUES:,} values (YAML aliases expanding without bound?)")
    active.add(id(node))
    try:
        return _build_node(node, path, doc, active, count)
    finally:
        active.discard(id(node))


def _build_node(node: yaml.Node, path: KeyPath, doc: Located, active: set, count: list) -> Any:
    doc.origins[path] = Origin(doc.file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise InputError(doc.file, key_node.start_mark.line + 1, dotted(path) or None,
                                 "YAML merge keys (<<) are not supported")
            if not isinstance(key_node, yaml.ScalarNode):
                raise InputError(doc.file, key_node.start_mark.line + 1, dotted(path) or None,
                                 "mapping keys must be plain strings")
            key = str(key_node.value)
            if key in out:
                raise InputError(doc.file, key_node.start_mark.line + 1, dotted(path + (key,)),
                                 "duplicate key")
            child = path + (key,)
            out[key] = _build(value_node, child, doc, active, count)
            # A key's own line is more useful than its value's (block values start below).
            doc.origins[child] = Origin(doc.file, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, active, count) for i, item in enumerate(node.value)]
    doc.raw[path] = node.value
    try:
        value = _constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise InputError(doc.file, node.start_mark.line + 1, dotted(path) or None,
                         f"cannot read value: {_one_line(exc.problem)}") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. a date like 2024-99-99
        raise InputError(doc.file, node.start_mark.line + 1, dotted(path) or None,
                         f"cannot read value {node.value!r}: {_one_line(exc)}") from None
    if isinstance(value, str) and "\0" in value:
        raise InputError(doc.file, node.start_mark.line + 1, dotted(path) or None, "contains a NUL byte")
    return value
