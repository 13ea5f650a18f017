"""Ansible YAML inventories: which hosts exist and which variables each one gets.

The file format and the merge rules follow ansible-core's `yaml` inventory
plugin and its variable manager:

* the top level maps group names to groups; a group may hold only `hosts`,
  `vars` and `children` (other keys are skipped with Ansible's warning);
* host patterns expand `[01:04]`, `[1:9:2]` and `[a:f]` ranges and may carry
  a `:port` suffix, which becomes `ansible_port`;
* a host's variables merge `all`, then its groups from the shallowest to the
  deepest (same depth: by `ansible_group_priority`, then by name), then the
  host's own vars. Plain variables replace (hash_behaviour=replace); only the
  `sglprep` mapping deep-merges, after its dotted keys (`model.path: x`) are
  turned into nested mappings.

Every key of the merged `sglprep` mapping keeps the (file, line) it was written
at, so validation can point at the inventory line that set a bad value.
"""
from __future__ import annotations

from itertools import product
from typing import NamedTuple
from string import ascii_letters

from .errors import InputError
from .state_yaml import KeyPath, Located, Origin, dotted, load_file

OVERRIDES_VAR = "sglprep"
STATE_VAR = "sglprep_state"
PRIORITY_VAR = "ansible_group_priority"
SECTIONS = ("hosts", "vars", "children")
LOCAL_ADDRESSES = frozenset({"localhost", "127.0.0.1", "::1"})
LOCAL_CONNECTIONS = frozenset({"local", "ansible.builtin.local"})
MAX_HOSTS_PER_PATTERN = 100_000

_MISSING = object()
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_UNEXPECTED_KEY = ('Skipping unexpected key ({key}) in group ({group}), '
                   'only "vars", "children" and "hosts" are valid')


class HostVars(NamedTuple):
    """Everything the inventory says about one host."""

    name: str
    groups: list[str]  # every group the host is in, `all` and ancestors included, sorted
    vars: dict  # merged variables; vars["sglprep"] deep-merged and normalized
    overrides: dict  # vars.get("sglprep", {}): nested mappings, no dotted keys
    override_origins: dict  # KeyPath within the sglprep mapping -> Origin
    state_file: str | None  # sglprep_state, if set
    state_file_origin: Origin | None
    is_local: bool  # reached without SSH (localhost address or a local connection)


class Inventory:
    """A parsed inventory. Host variables are merged on request by `host()`."""

    def __init__(self, file: str, warnings: list | None = None, hosts: dict | None = None,
                 groups: dict | None = None, host_groups: dict | None = None, merge_order: dict | None = None,
                 group_files: dict | None = None, host_files: dict | None = None):
        self.file = file  # display path
        self.warnings = warnings if warnings is not None else []
        self._hosts = hosts or {}  # name -> _Host, in definition order
        self._groups = groups or {}  # name -> _Group
        self._host_groups = host_groups or {}  # host -> sorted group names
        self._merge_order = merge_order or {}  # group -> sort key
        self._group_files = group_files or {}  # group -> _Level from group_vars/<group>
        self._host_files = host_files or {}  # host -> _Level from host_vars/<host>

    def host_names(self) -> list[str]:
        """Hosts in the order the inventory first names them (no implicit localhost)."""
        return list(self._hosts)

    def host(self, name: str, hash_behaviour: str = "replace") -> HostVars:
        """The merged view of host `name`; `localhost` always exists implicitly.
        `hash_behaviour`: Ansible's, for the `sglprep` mapping across levels:
        `replace` (Ansible's default: the most specific level's mapping wins
        whole) or `merge` (key by key)."""
        deep = hash_behaviour == "merge"
        if name in self._hosts:
            groups = self._host_groups[name]
            ordered = sorted(groups, key=self._merge_order.__getitem__)
            # ansible-core's default precedence: the inventory file's group vars
            # (all, then the host's groups), group_vars/all, group_vars/<group>,
            # the file's host vars, host_vars/<host>
            levels = [self._groups[g].level for g in ordered]
            levels += [self._group_files[g] for g in ordered if g == "all" and g in self._group_files]
            levels += [self._group_files[g] for g in ordered if g != "all" and g in self._group_files]
            levels += [self._hosts[name].level]
            levels += [self._host_files[name]] if name in self._host_files else []
            return _host_vars(name, list(groups), levels, deep)
        if name == "localhost":
            # Like Ansible's implicit localhost: only `all` vars, a local
            # connection, and membership in no group.
            implicit = _Level()
            implicit.plain["ansible_connection"] = "local"
            levels = [self._groups["all"].level] + ([self._group_files["all"]] if "all" in self._group_files else [])
            levels += [implicit] + ([self._host_files[name]] if name in self._host_files else [])
            return _host_vars(name, [], levels, deep)
        raise InputError(self.file, None, None,
                         f"host '{name}' is not in the inventory (known: {_known(self.host_names())})")

    def match(self, pattern: str) -> list[str]:
        """The hosts an Ansible host pattern selects, in inventory order:
        names and groups, `all`/`*`, wildcards (`gpu0*`), regexes (`~gpu0[12]`),
        subscripts (`gpus[0:2]`, both ends included, `gpus[-1]`), and
        combined with `:` or `,`: union, `:&` intersection, `:!` exclusion.
        A pattern that selects nothing is an error naming it."""
        terms = _split_pattern(pattern)
        regular = [t for t in terms if not t.startswith(("&", "!"))]
        ordered = regular + [t for t in terms if t.startswith("&")] + [t for t in terms if t.startswith("!")]
        hosts: list[str] = []
        for term in ordered:
            if term.startswith("!"):
                that = set(self._match_one(term[1:]))
                hosts = [h for h in hosts if h not in that]
            elif term.startswith("&"):
                that = set(self._match_one(term[1:]))
                hosts = [h for h in hosts if h in that]
            else:
                hosts += [h for h in self._match_one(term) if h not in hosts]
        if not hosts:
            raise InputError(self.file, None, "--limit", f"pattern {pattern!r} matches no host (known hosts: "
                             f"{_known(self.host_names() or ['localhost'])})")
        return hosts

    def _match_one(self, term: str) -> list[str]:
        import re

        subscript = None
        m = re.fullmatch(r"(.+?)\[(-?\d+)(?::(-?\d*))?\]", term)
        if m and not term.startswith("~"):
            term = m.group(1)
            subscript = (int(m.group(2)), m.group(3))
        found = self._enumerate(term)
        if subscript is not None:
            start, end = subscript
            if end is None:
                found = [found[start]] if -len(found) <= start < len(found) else []
            else:
                stop = len(found) if end == "" else int(end) + 1
                found = found[start:stop]
        return found

    def _enumerate(self, term: str) -> list[str]:
        import fnmatch
        import re

        names = self.host_names()
        if term in ("all", "*"):
            return names
        if term in self._groups:
            return self.group_hosts(term)
        if term in self._hosts:
            return [term]
        if term.startswith("~"):
            try:
                rx = re.compile(term[1:])
            except re.error as exc:
                raise InputError(self.file, None, "--limit", f"bad regex in pattern {term!r}: {exc}") from None

            def hit(name: str) -> bool:
                return bool(rx.match(name))
        elif any(c in term for c in "*?["):
            def hit(name: str) -> bool:
                return fnmatch.fnmatchcase(name, term)
        else:
            return ["localhost"] if term in LOCAL_ADDRESSES and term == "localhost" else []
        out = []
        for group in sorted(self._groups):  # hosts of every matching group, then matching hosts
            if hit(group):
                out += [h for h in self.group_hosts(group) if h not in out]
        out += [h for h in names if hit(h) and h not in out]
        return [h for h in names if h in out]

    def group_hosts(self, group: str) -> list[str]:
        """Hosts in `group` or any group below it, in definition order."""
        if group not in self._groups:
            raise InputError(self.file, None, None,
                             f"group '{group}' is not in the inventory (known: {_known(sorted(self._groups))})")
        return [h for h, groups in self._host_groups.items() if group in groups]


def load_inventory(path: str | None, display: str | None = None) -> Inventory:
    """Parse the inventory at `path`; None gives an empty one (implicit localhost only)."""
    if path is None:
        return _Parser(Located(value={}, file=display or "")).inventory()
    display = display or path
    try:
        doc = load_file(path, display)
        parser = _Parser(doc)
        parser.parse()
        parser.load_var_files(path, display)
    except RecursionError:
        raise InputError(display, None, None, "nested too deeply (or a recursive YAML alias)") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a shape the parser did not expect
        summary = " ".join(str(exc).split())[:200]
        raise InputError(display, None, None, f"cannot read the inventory: {type(exc).__name__}: {summary}") from None
    return parser.inventory()


# --- host patterns -------------------------------------------------------------

VAR_EXTS = ("", ".yml", ".yaml", ".json")


def _split_pattern(pattern: str) -> list[str]:
    """Ansible's split of a --limit pattern: on ',' if it has one, else on
    ':' outside `[...]` subscripts (an IPv6 address or a `host:port` is not
    a pattern separator here)."""
    if "," in pattern:
        return [t.strip() for t in pattern.split(",") if t.strip()]
    terms, depth, current = [], 0, ""
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        if char == ":" and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def split_port(pattern: str) -> tuple[str, int | None]:
    """Split a trailing `:port` off a host pattern, as Ansible's parse_address does.

    `gpu-01:2222` and `[fe80::1]:2222` carry a port; `fe80::1` and `db[1:3]` do not.
    """
    if pattern.startswith("["):
        end = pattern.rfind("]:")
        if end > 0 and _is_digits(pattern[end + 2:]):
            inner = pattern[1:end]
            if _is_ipv6(inner) or not any(c in inner for c in ":[]"):
                return inner, int(pattern[end + 2:])
    host, sep, port = pattern.rpartition(":")
    if not sep or not host or not _is_digits(port) or _colon_outside_ranges(host):
        return pattern, None
    return host, int(port)


def expand_hosts(pattern: str) -> list[str]:
    """Expand the `[begin:end(:step)]` ranges of a host pattern (several: a product).

    Raises ValueError with Ansible's wording for a malformed range.
    """
    if "[" not in pattern:
        return [pattern]
    pieces: list[list[str]] = []
    rest = pattern
    while (start := rest.find("[")) >= 0:
        end = rest.find("]", start)
        if end < 0:
            raise ValueError("host range is missing its closing ']'")
        pieces.append([rest[:start]])
        pieces.append(_expand_range(rest[start + 1:end]))
        rest = rest[end + 1:]
    pieces.append([rest])
    total = 1
    for choices in pieces:
        total *= len(choices)
    if total > MAX_HOSTS_PER_PATTERN:
        raise ValueError(f"host pattern expands to {total} hosts (at most {MAX_HOSTS_PER_PATTERN})")
    return ["".join(parts) for parts in product(*pieces)]


def _expand_range(spec: str) -> list[str]:
    """`01:04` -> 01 02 03 04; `a:c` -> a b c; `1:9:4` -> 1 5 9."""
    bounds = spec.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError("host range must be begin:end or begin:end:step")
    beg, end = bounds[0] or "0", bounds[1]
    if not end:
        raise ValueError("host range must specify end value")
    step = bounds[2] if len(bounds) == 3 else "1"
    if not _is_digits(step) or int(step) == 0:
        raise ValueError("host range step must be a positive integer")
    if len(beg) == 1 and len(end) == 1 and beg in ascii_letters and end in ascii_letters:
        first, last = ascii_letters.index(beg), ascii_letters.index(end)
        if first > last:
            raise ValueError("host range must have begin <= end")
        return list(ascii_letters[first:last + 1:int(step)])
    if not (_is_digits(beg) and _is_digits(end)):
        raise ValueError("host range bounds must be numbers or single letters")
    first, last = int(beg), int(end)
    if first > last:
        raise ValueError("host range must have begin <= end")
    numbers = range(first, last + 1, int(step))
    if beg[0] == "0" and len(beg) > 1:
        if len(end) != len(beg):
            raise ValueError("host range must specify equal-length begin and end formats")
        return [str(n).zfill(len(beg)) for n in numbers]
    return [str(n) for n in numbers]


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_ipv6(text: str) -> bool:
    colons = text.count(":")
    return colons >= 2 and ("::" in text or colons == 7) and all(c in _IPV6_CHARS for c in text)


def _colon_outside_ranges(text: str) -> bool:
    """True if `text` has a ':' outside `[...]` (an IPv6 literal) or an unclosed '['."""
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char == ":" and depth == 0:
            return True
    return depth != 0


# --- parsing -------------------------------------------------------------------

class _Level:
    """The variables one group or one host sets, before precedence is applied."""

    __slots__ = ("plain", "plain_origins", "overrides", "override_origins")

    def __init__(self) -> None:
        self.plain: dict = {}  # var -> value (everything but sglprep)
        self.plain_origins: dict = {}  # var -> Origin
        self.overrides: dict | None = None  # normalized sglprep mapping, None if never set
        self.override_origins: dict = {}  # KeyPath -> Origin

    def merge(self, other: _Level, deep: bool = True) -> None:
        """Apply `other` on top of this level. `deep`: the `sglprep` mapping
        merges key by key (hash_behaviour=merge); else the higher level's
        mapping replaces the lower one whole, as Ansible does by default."""
        self.plain.update(other.plain)
        self.plain_origins.update(other.plain_origins)
        if other.overrides is not None:
            if self.overrides is None or not deep:
                self.overrides = {}
                self.override_origins = {}
            _deep_merge(self.overrides, self.override_origins, other.overrides, other.override_origins, ())


class _Group:
    __slots__ = ("name", "level", "priority", "children", "parents")

    def __init__(self, name: str) -> None:
        self.name = name
        self.level = _Level()
        self.priority = 1  # Ansible's default ansible_group_priority
        self.children: dict = {}  # child name -> KeyPath where the edge is written (None: implicit)
        self.parents: dict = {}  # parent name -> None (an ordered set)


class _Host:
    __slots__ = ("name", "level", "groups")

    def __init__(self, name: str) -> None:
        self.name = name
        self.level = _Level()
        self.groups: dict = {}  # groups the inventory lists the host under -> None


class _Parser:
    """Turns one loaded YAML document into groups, hosts and their variable levels."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.groups: dict[str, _Group] = {"all": _Group("all"), "ungrouped": _Group("ungrouped")}
        self.hosts: dict[str, _Host] = {}
        self.warnings: list[str] = []

    def error(self, path: KeyPath, message: str) -> InputError:
        return InputError(self.doc.file, self.doc.origin(path).line, dotted(path) or None, message)

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(f"{self.doc.file}:{self.doc.origin(path).line}: {message}")

    def parse(self) -> None:
        data = self.doc.value
        if not isinstance(data, dict):
            raise self.error((), f"an inventory must be a mapping of group names, got {_kind(data)}")
        if not data:
            raise InputError(self.doc.file, None, None, "inventory is empty")
        if "plugin" in data:
            raise self.error(("plugin",), "plugin inventories are not supported")
        for name, body in data.items():
            self.parse_group(name, body, (name,))

    def parse_group(self, name: str, body, path: KeyPath) -> None:
        if not name:
            raise self.error(path, "group name must not be empty")
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _Group(name)
        if body is None:
            return
        if not isinstance(body, dict):
            self.warn(path, f"Skipping '{name}' as this is not a valid group definition")
            return
        for key, section in body.items():
            key_path = path + (key,)
            if key not in SECTIONS:
                self.warn(key_path, _UNEXPECTED_KEY.format(key=key, group=name))
                continue
            if isinstance(section, str) and key != "vars":
                section = {section: None}  # `hosts: foo` means `hosts: {foo: }`
            if section is None:
                continue
            if not isinstance(section, dict):
                raise self.error(key_path, f"must be a mapping, got {_kind(section)}")
            if key == "vars":
                self.group_vars(group, section, key_path)
            elif key == "children":
                for child, child_body in section.items():
                    child_path = key_path + (child,)
                    self.parse_group(child, child_body, child_path)
                    group.children.setdefault(child, child_path)
                    self.groups[child].parents[name] = None
            else:
                for pattern, host_vars in section.items():
                    self.parse_hosts(group, pattern, host_vars, key_path + (pattern,))

    def group_vars(self, group: _Group, section: dict, path: KeyPath) -> None:
        for var, value in section.items():
            var_path = path + (var,)
            if var == PRIORITY_VAR:  # Ansible keeps it out of the vars
                group.priority = self.priority(value, var_path)
            else:
                self.set_var(group.level, var, value, var_path)

    def priority(self, value, path: KeyPath) -> int:
        if not isinstance(value, bool):
            try:
                return int(value)
            except (TypeError, ValueError):
                pass
        raise self.error(path, f"must be an integer, got {_kind(value)}")

    def parse_hosts(self, group: _Group, pattern: str, host_vars, path: KeyPath) -> None:
        if not pattern:
            raise self.error(path, "host name must not be empty")
        if not host_vars:  # as in Ansible: `host:`, `host: {}` and other empty values
            host_vars = {}
        if not isinstance(host_vars, dict):
            raise self.error(path, f"host vars must be a mapping, got {_kind(host_vars)}")
        name_pattern, port = split_port(pattern)
        try:
            names = expand_hosts(name_pattern)
        except ValueError as exc:
            raise self.error(path, str(exc)) from None
        written = _Level()  # parsed once, applied to every host of the pattern
        for var, value in host_vars.items():
            self.set_var(written, var, value, path + (var,))
        for name in names:
            host = self.hosts.get(name)
            if host is None:
                host = self.hosts[name] = _Host(name)
                if port is not None:  # Ansible sets the port only when it creates the host
                    host.level.plain["ansible_port"] = port
                    host.level.plain_origins["ansible_port"] = self.doc.origin(path)
            host.groups[group.name] = None
            host.level.merge(written)

    def set_var(self, level: _Level, var: str, value, path: KeyPath) -> None:
        if var == OVERRIDES_VAR:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise self.error(path, f"must be a mapping of settings, got {_kind(value)}")
            tree: dict = {}
            origins: dict = {(): self.doc.origin(path)}
            self.normalize(value, path, tree, (), origins)
            if level.overrides is None:
                level.overrides = {}
            _deep_merge(level.overrides, level.override_origins, tree, origins, ())
            return
        if var == STATE_VAR and value is not None and not (isinstance(value, str) and value):
            raise self.error(path, f"must be the path of a state file, got {_kind(value)}")
        level.plain[var] = value
        level.plain_origins[var] = self.doc.origin(path)

    def normalize(self, node: dict, path: KeyPath, out: dict, prefix: KeyPath, origins: dict) -> None:
        """Copy `node` (written at `path`) into `out` with dotted keys split into mappings."""
        for key, value in node.items():
            key_path = path + (key,)
            origin = self.doc.origin(key_path)
            parts = key.split(".")
            if "" in parts:
                raise self.error(key_path, "empty part in dotted key")
            target = out
            at = prefix
            for part in parts[:-1]:
                at += (part,)
                inner = target.get(part, _MISSING)
                if inner is _MISSING:
                    inner = target[part] = {}
                    origins[at] = origin
                elif not isinstance(inner, dict):
                    raise self.set_twice(key_path, prefix + tuple(parts), at, origins)
                target = inner
            at += (parts[-1],)
            existing = target.get(parts[-1], _MISSING)
            if isinstance(value, dict):
                if existing is _MISSING:
                    existing = target[parts[-1]] = {}
                    origins[at] = origin
                elif not isinstance(existing, dict):
                    raise self.set_twice(key_path, at, at, origins)
                self.normalize(value, key_path, existing, at, origins)
            elif existing is not _MISSING:
                raise self.set_twice(key_path, at, at, origins)
            else:
                target[parts[-1]] = value
                origins[at] = origin
                self.record_origins(value, key_path, at, origins)

    def set_twice(self, key_path: KeyPath, target: KeyPath, clash: KeyPath, origins: dict) -> InputError:
        first = origins[clash].line
        if clash == target:
            return self.error(key_path, f"set twice (first at line {first})")
        return self.error(key_path, f"set twice ({dotted((OVERRIDES_VAR,) + clash)} first at line {first})")

    def record_origins(self, value, path: KeyPath, at: KeyPath, origins: dict) -> None:
        """Origins of the items inside a list (or a mapping inside a list)."""
        if isinstance(value, list):
            items = enumerate(value)
        elif isinstance(value, dict):
            items = value.items()
        else:
            return
        for key, item in items:
            origins[at + (key,)] = self.doc.origin(path + (key,))
            self.record_origins(item, path + (key,), at + (key,), origins)

    # --- group graph ---

    def resolve(self) -> tuple[dict, dict]:
        """Attach parentless groups to `all`, reject cycles, order and close the graph.

        Returns (group -> merge sort key, group -> frozenset of its ancestors).
        """
        groups = self.groups
        top = groups["all"]
        for group in groups.values():
            if group is not top and not group.parents:
                top.children.setdefault(group.name, None)
                group.parents["all"] = None
        self.check_cycles()
        # Depth is the longest path from `all`, as Ansible's Group.depth.
        depth = dict.fromkeys(groups, 0)
        ancestors: dict[str, frozenset] = {}
        waiting = {name: len(group.parents) for name, group in groups.items()}
        ready = [name for name, count in waiting.items() if count == 0]
        for name in ready:  # grows while iterating: a topological order
            group = groups[name]
            above: set = set()
            for parent in group.parents:
                above.add(parent)
                above.update(ancestors[parent])
            ancestors[name] = frozenset(above)
            for child in group.children:
                depth[child] = max(depth[child], depth[name] + 1)
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        order = {name: (depth[name], group.priority, name) for name, group in groups.items()}
        return order, ancestors

    def check_cycles(self) -> None:
        groups = self.groups
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for start in groups:
            if start in state:
                continue
            state[start] = 1
            path = [start]
            stack = [iter(groups[start].children)]
            while stack:
                child = next(stack[-1], None)
                if child is None:
                    state[path.pop()] = 2
                    stack.pop()
                elif state.get(child) == 1:
                    self.cycle_error(path[path.index(child):] + [child])
                elif child not in state:
                    state[child] = 1
                    path.append(child)
                    stack.append(iter(groups[child].children))

    def cycle_error(self, cycle: list[str]) -> None:
        # Report the last edge of the cycle that the file spells out.
        edges = [self.groups[a].children[b] for a, b in zip(cycle, cycle[1:])]
        where = next(path for path in reversed(edges) if path is not None)
        raise self.error(where, f"group cycle: {' -> '.join(cycle)}")

    # --- group_vars/ and host_vars/ beside the inventory ---

    def load_var_files(self, path: str, display: str) -> None:
        """Ansible's host_group_vars: `group_vars/<group>` and
        `host_vars/<host>` beside the inventory, each a YAML file (no
        extension, .yml, .yaml or .json) or a directory of them (read in
        name order), for groups and hosts the inventory has."""
        import os

        base = os.path.dirname(os.path.abspath(path))
        shown = os.path.dirname(display)
        self.group_files: dict = {}
        self.host_files: dict = {}
        for kind, names, into in (("group_vars", self.groups, self.group_files),
                                  ("host_vars", self.hosts, self.host_files)):
            folder = os.path.join(base, kind)
            if not os.path.isdir(folder):
                continue
            for entry in sorted(os.listdir(folder)):
                name, ext = os.path.splitext(entry)
                if entry.startswith(".") or entry.endswith("~"):
                    continue
                full = os.path.join(folder, entry)
                if os.path.isdir(full):
                    name, files = entry, [os.path.join(full, f) for f in sorted(os.listdir(full))
                                          if not f.startswith(".") and os.path.splitext(f)[1] in VAR_EXTS
                                          and os.path.isfile(os.path.join(full, f))]
                elif ext in VAR_EXTS:
                    files = [full]
                else:
                    continue
                if name not in names:
                    continue
                level = into.setdefault(name, _Level())
                for file in files:
                    rel = os.path.join(shown, os.path.relpath(file, base)) if shown else os.path.relpath(file, base)
                    self.var_file(level, file, rel)

    def var_file(self, level: "_Level", file: str, display: str) -> None:
        doc = load_file(file, display)
        if doc.value in (None, {}):
            return
        if not isinstance(doc.value, dict):
            raise InputError(display, 1, None, f"a vars file must be a mapping, got {_kind(doc.value)}")
        sub = _Parser(doc)
        for var, value in doc.value.items():
            sub.set_var(level, var, value, (var,))

    def inventory(self) -> Inventory:
        order, ancestors = self.resolve()
        host_groups = {}
        for name, host in self.hosts.items():
            direct = set(host.groups) - {"all", "ungrouped"}
            if not direct:
                direct = {"ungrouped"}
            member = {"all"}
            for group in direct:
                member.add(group)
                member.update(ancestors[group])
            host_groups[name] = sorted(member)
        return Inventory(file=self.doc.file, warnings=self.warnings, hosts=self.hosts,
                         groups=self.groups, host_groups=host_groups, merge_order=order,
                         group_files=getattr(self, "group_files", {}), host_files=getattr(self, "host_files", {}))


# --- merging -------------------------------------------------------------------

def _host_vars(name: str, groups: list[str], levels: list[_Level], deep: bool = False) -> HostVars:
    """Merge `levels` (lowest precedence first) into one host's view."""
    merged = _Level()
    for level in levels:
        merged.merge(level, deep)
    variables = {var: _copy(value) for var, value in merged.plain.items()}
    overrides = merged.overrides
    if overrides is not None:
        variables[OVERRIDES_VAR] = overrides
    state_file = merged.plain.get(STATE_VAR)
    return HostVars(
        name=name,
        groups=groups,
        vars=variables,
        overrides=overrides if overrides is not None else {},
        override_origins=merged.override_origins,
        state_file=state_file,
        state_file_origin=merged.plain_origins.get(STATE_VAR) if state_file is not None else None,
        is_local=_is_local(name, variables),
    )


def _deep_merge(dst: dict, dst_origins: dict, src: dict, src_origins: dict, at: KeyPath) -> None:
    """Merge mapping `src` into `dst` (src wins), carrying origins along; copies src."""
    if at in src_origins:
        dst_origins[at] = src_origins[at]
    for key, value in src.items():
        path = at + (key,)
        old = dst.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, dict):
            _deep_merge(old, dst_origins, value, src_origins, path)
            continue
        if old is not _MISSING:
            for inner in _paths(old, path):
                dst_origins.pop(inner, None)
        dst[key] = _copy(value)
        for inner in _paths(value, path):
            if inner in src_origins:
                dst_origins[inner] = src_origins[inner]


def _paths(value, at: KeyPath):
    """`at` and every key path inside `value`."""
    yield at
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, at + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, at + (index,))


def _copy(value):
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _is_local(name: str, variables: dict) -> bool:
    if variables.get("ansible_connection") in LOCAL_CONNECTIONS:
        return True
    address = variables.get("ansible_host") or name
    return str(address) in LOCAL_ADDRESSES


def _known(names: list[str], limit: int = 10) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (", …" if len(names) > limit else "")


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    for kind, name in ((dict, "a mapping"), (list, "a list"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"
