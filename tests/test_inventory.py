"""Ansible YAML inventories: host patterns, groups, variable precedence, errors."""
from __future__ import annotations

import textwrap

import pytest

from reconcile.errors import InputError
from reconcile.state_inventory import expand_hosts, load_inventory, split_port
from reconcile.state_yaml import Origin

FILE = "inventory.yaml"


def load(tmp_path, text: str):
    path = tmp_path / FILE
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_inventory(str(path), FILE)


def load_error(tmp_path, text: str) -> str:
    with pytest.raises(InputError) as info:
        load(tmp_path, text)
    return str(info.value)


def at(line: int) -> Origin:
    return Origin(FILE, line)


# --- hosts and groups ----------------------------------------------------------

def test_simple_localhost(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            localhost:
    """)
    assert inv.host_names() == ["localhost"]
    host = inv.host("localhost")
    assert host.groups == ["all", "ungrouped"]
    assert host.vars == {} and host.overrides == {} and host.override_origins == {}
    assert host.state_file is None and host.state_file_origin is None
    assert host.is_local
    assert inv.group_hosts("ungrouped") == ["localhost"]
    assert inv.warnings == []


@pytest.mark.parametrize("pattern, expected", [
    ("gpu-[01:04]", ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]),
    ("node[8:11]", ["node8", "node9", "node10", "node11"]),
    ("www[01:09:2].x", ["www01.x", "www03.x", "www05.x", "www07.x", "www09.x"]),
    ("db-[a:f]", ["db-a", "db-b", "db-c", "db-d", "db-e", "db-f"]),
    ("db-[a:e:2]", ["db-a", "db-c", "db-e"]),
    ("r[1:2]-n[a:b]", ["r1-na", "r1-nb", "r2-na", "r2-nb"]),
    ("[:2]x", ["0x", "1x", "2x"]),
    ("plain.example.com", ["plain.example.com"]),
])
def test_range_expansion(tmp_path, pattern, expected):
    assert expand_hosts(pattern) == expected
    inv = load(tmp_path, f"""
        gpu:
          hosts:
            "{pattern}":
    """)
    assert inv.host_names() == expected
    assert inv.group_hosts("gpu") == expected


@pytest.mark.parametrize("pattern, message", [
    ("gpu-[01:4]", "host range must specify equal-length begin and end formats"),
    ("gpu-[4:1]", "host range must have begin <= end"),
    ("gpu-[f:a]", "host range must have begin <= end"),
    ("gpu-[1]", "host range must be begin:end or begin:end:step"),
    ("gpu-[1:]", "host range must specify end value"),
    ("gpu-[1:4:0]", "host range step must be a positive integer"),
    ("gpu-[x:10]", "host range bounds must be numbers or single letters"),
    ("gpu-[1:4", "host range is missing its closing ']'"),
])
def test_bad_range(tmp_path, pattern, message):
    assert load_error(tmp_path, f"""
        all:
          hosts:
            "{pattern}":
    """) == f"{FILE}:3: all.hosts.{pattern}: {message}"


@pytest.mark.parametrize("pattern, host, port", [
    ("gpu-01:2222", "gpu-01", 2222),
    ("10.0.0.5:22", "10.0.0.5", 22),
    ("[fe80::1]:2222", "fe80::1", 2222),
    ("[10.0.0.5]:22", "10.0.0.5", 22),
    ("db[1:3]:22", "db[1:3]", 22),
    ("db[1:3]", "db[1:3]", None),
    ("fe80::1", "fe80::1", None),
    ("::1", "::1", None),
    ("fe80::1:22", "fe80::1:22", None),
    ("host:ssh", "host:ssh", None),
    ("gpu-01", "gpu-01", None),
])
def test_split_port(pattern, host, port):
    assert split_port(pattern) == (host, port)


def test_port_becomes_ansible_port(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            gpu-[1:2]:2222:
            other:2200:
              ansible_port: 22
    """)
    assert inv.host_names() == ["gpu-1", "gpu-2", "other"]
    assert inv.host("gpu-2").vars == {"ansible_port": 2222}
    assert inv.host("other").vars == {"ansible_port": 22}  # explicit host var wins


def test_string_sections_and_null_groups(tmp_path):
    inv = load(tmp_path, """
        all:
          children:
            empty:
            gpu:
              hosts: foo
              children: h100
        h100:
          hosts:
            bar:
        lonely:
    """)
    assert inv.host_names() == ["foo", "bar"]
    assert inv.group_hosts("gpu") == ["foo", "bar"]
    assert inv.group_hosts("h100") == ["bar"]
    assert inv.group_hosts("empty") == []
    assert inv.group_hosts("lonely") == []
    assert inv.group_hosts("all") == ["foo", "bar"]
    assert inv.group_hosts("ungrouped") == []
    assert inv.host("bar").groups == ["all", "gpu", "h100"]


def test_group_defined_in_several_places_merges(tmp_path):
    inv = load(tmp_path, """
        all:
          children:
            gpu:
              hosts:
                a:
              vars:
                x: 1
                y: 1
        gpu:
          hosts:
            b:
          vars:
            y: 2
    """)
    assert inv.group_hosts("gpu") == ["a", "b"]
    assert inv.host("a").vars == {"x": 1, "y": 2}


def test_ungrouped(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            a:
            b:
        ungrouped:
          hosts:
            c:
            b:
        gpu:
          hosts:
            a:
    """)
    assert inv.group_hosts("ungrouped") == ["b", "c"]
    assert inv.host("a").groups == ["all", "gpu"]
    assert inv.host("c").groups == ["all", "ungrouped"]


def test_host_vars_are_host_level_wherever_written(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            a:
              x: 1
              y: 1
          children:
            gpu:
              vars:
                x: group
              hosts:
                a:
                  y: 2
    """)
    assert inv.host("a").vars == {"x": 1, "y": 2}


# --- precedence ----------------------------------------------------------------

def test_precedence_all_parent_child_host(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            level: all
          hosts:
            top:
          children:
            parent:
              vars:
                level: parent
              hosts:
                p1:
              children:
                child:
                  vars:
                    level: child
                  hosts:
                    c1:
                    c2:
                      level: host
    """)
    assert {h: inv.host(h).vars["level"] for h in inv.host_names()} == {
        "top": "all", "p1": "parent", "c1": "child", "c2": "host"}
    assert inv.host("c1").groups == ["all", "child", "parent"]


def test_depth_beats_definition_order(tmp_path):
    # `child` is written before its parent's vars and is also a top-level
    # group; it still sits below `parent` (depth 2) and wins.
    inv = load(tmp_path, """
        child:
          vars:
            v: child
          hosts:
            h:
        parent:
          children:
            child:
          vars:
            v: parent
        all:
          vars:
            v: all
    """)
    assert inv.host("h").vars["v"] == "child"


@pytest.mark.parametrize("priorities, winner", [
    ({}, "beta"),  # ASCII order: Zeta < alpha < beta, the last one wins
    ({"alpha": 10}, "alpha"),
    ({"Zeta": 5, "alpha": 3}, "Zeta"),
    ({"beta": 0}, "alpha"),
    ({"alpha": "7"}, "alpha"),
])
def test_same_depth_order(tmp_path, priorities, winner):
    def group(name):
        extra = f"\n    ansible_group_priority: {priorities[name]}" if name in priorities else ""
        return f"{name}:\n  hosts:\n    h:\n  vars:\n    v: {name}{extra}\n"
    inv = load(tmp_path, "".join(group(name) for name in ("beta", "alpha", "Zeta")))
    host = inv.host("h")
    assert host.vars == {"v": winner}  # ansible_group_priority is not a var
    assert host.groups == ["Zeta", "all", "alpha", "beta"]


def test_priority_does_not_beat_depth(tmp_path):
    inv = load(tmp_path, """
        shallow:
          vars:
            v: shallow
            ansible_group_priority: 100
          hosts:
            h:
        parent:
          children:
            deep:
              vars:
                v: deep
              hosts:
                h:
    """)
    assert inv.host("h").vars["v"] == "deep"


def test_plain_vars_replace_mappings(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            extra: {a: 1, b: 2}
          hosts:
            h:
              extra: {b: 3}
    """)
    assert inv.host("h").vars["extra"] == {"b": 3}


def test_sglprep_deep_merge_with_origins(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            sglprep:
              model.path: /models/base
              model.revision: main
              caches:
                flashinfer: build
                triton: build
          children:
            gpu:
              vars:
                sglprep:
                  caches.flashinfer: skip
                  tp: 4
              hosts:
                gpu-01:
                  sglprep:
                    model:
                      path: /models/big
                gpu-02:
    """)
    replaced = inv.host("gpu-01")  # Ansible's default hash_behaviour: the host's mapping replaces its groups'
    assert replaced.overrides == {"model": {"path": "/models/big"}}
    one = inv.host("gpu-01", "merge")
    assert one.overrides == {
        "model": {"path": "/models/big", "revision": "main"},
        "caches": {"flashinfer": "skip", "triton": "build"},
        "tp": 4,
    }
    assert one.vars["sglprep"] == one.overrides
    origins = one.override_origins
    assert origins[("model", "path")] == at(19)
    assert origins[("model", "revision")] == at(5)
    assert origins[("caches", "flashinfer")] == at(13)
    assert origins[("caches", "triton")] == at(8)
    assert origins[("tp",)] == at(14)
    two = inv.host("gpu-02", "merge")
    assert two.overrides["model"] == {"path": "/models/base", "revision": "main"}
    assert two.override_origins[("model", "path")] == at(4)
    # Merging for one host leaves the other's (and the group's) data alone.
    assert inv.host("gpu-02", "merge").overrides == two.overrides
    assert inv.host("gpu-02").overrides == {"caches": {"flashinfer": "skip"}, "tp": 4}  # replace: the group's


def test_sglprep_replaced_subtree_drops_old_origins(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            sglprep:
              caches: {flashinfer: build}
              ports: [1, 2]
          hosts:
            h:
              sglprep:
                caches: off
                ports: [3]
    """)
    host = inv.host("h")
    assert host.overrides == {"caches": False, "ports": [3]}
    assert ("caches", "flashinfer") not in host.override_origins
    assert host.override_origins[("caches",)] == at(9)
    assert host.override_origins[("ports", 0)] == at(10)


def test_sglprep_state_precedence(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            sglprep_state: states/default.yaml
          hosts:
            plain:
          children:
            gpu:
              vars:
                sglprep_state: states/gpu.yaml
              hosts:
                g1:
                g2:
                  sglprep_state: states/g2.yaml
    """)
    assert [(inv.host(h).state_file, inv.host(h).state_file_origin) for h in ("plain", "g1", "g2")] == [
        ("states/default.yaml", at(3)), ("states/gpu.yaml", at(9)), ("states/g2.yaml", at(13))]


def test_returned_vars_are_independent(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            sglprep: {caches: {flashinfer: build}}
            extra: [1]
          hosts:
            a:
            b:
    """)
    a = inv.host("a")
    a.overrides["caches"]["flashinfer"] = "changed"
    a.vars["extra"].append(2)
    assert inv.host("b").overrides == {"caches": {"flashinfer": "build"}}
    assert inv.host("b").vars["extra"] == [1]


# --- implicit localhost and locality -------------------------------------------

def test_implicit_localhost(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            sglprep_state: states/x.yaml
            ansible_connection: ssh
          hosts:
            gpu-01:
    """)
    assert inv.host_names() == ["gpu-01"]
    local = inv.host("localhost")
    assert local.groups == []
    assert local.vars == {"sglprep_state": "states/x.yaml", "ansible_connection": "local"}
    assert local.state_file_origin == at(3)
    assert local.is_local
    assert "localhost" not in inv.group_hosts("all")


def test_no_inventory():
    inv = load_inventory(None)
    assert inv.host_names() == [] and inv.warnings == []
    assert inv.host("localhost").is_local
    with pytest.raises(InputError) as info:
        inv.host("gpu-01")
    assert str(info.value) == "host 'gpu-01' is not in the inventory (known: none)"


@pytest.mark.parametrize("name, host_vars, local", [
    ("localhost", "", True),
    ("127.0.0.1", "", True),
    ('"::1"', "", True),
    ("gpu-01", "", False),
    ("gpu-01", "ansible_connection: local", True),
    ("gpu-01", "ansible_host: 127.0.0.1", True),
    ("gpu-01", "ansible_host: localhost", True),
    ("gpu-01", "ansible_host: 10.0.0.1", False),
    ("localhost", "ansible_host: 10.0.0.1", False),
])
def test_is_local(tmp_path, name, host_vars, local):
    inv = load(tmp_path, f"""
        all:
          hosts:
            {name}: {{{host_vars}}}
    """)
    [host] = inv.host_names()
    assert inv.host(host).is_local is local


# --- warnings and errors -------------------------------------------------------

def test_unexpected_group_key_warns(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            a:
          hots:
            b:
          children:
            gpu:
              variables:
                x: 1
    """)
    assert inv.warnings == [
        f'{FILE}:4: Skipping unexpected key (hots) in group (all), only "vars", "children" and "hosts" are valid',
        f'{FILE}:8: Skipping unexpected key (variables) in group (gpu), only "vars", "children" and "hosts" are valid',
    ]
    assert inv.host_names() == ["a"]


def test_invalid_group_definition_warns(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            a:
        gpu: [a]
    """)
    assert inv.warnings == [f"{FILE}:4: Skipping 'gpu' as this is not a valid group definition"]


@pytest.mark.parametrize("text, message", [
    ("plugin: aws_ec2\nregions: [x]\n", f"{FILE}:1: plugin: plugin inventories are not supported"),
    ("all:\n  hosts:\n    a:\n  vars:\n    - x\n", f"{FILE}:4: all.vars: must be a mapping, got a list"),
    ("all:\n  vars: tp\n", f"{FILE}:2: all.vars: must be a mapping, got a string"),
    ("all:\n  hosts:\n    - a\n", f"{FILE}:2: all.hosts: must be a mapping, got a list"),
    ("all:\n  children: 3\n", f"{FILE}:2: all.children: must be a mapping, got a number"),
    ("all:\n  hosts:\n    a: oops\n", f"{FILE}:3: all.hosts.a: host vars must be a mapping, got a string"),
    ("all:\n  hosts:\n    a:\n  b: c\n d: e\n", f"{FILE}:5: YAML syntax error: did not find expected key"),
    ("all:\n  hosts:\n  a: b\n   c: d\n", f"{FILE}:4: YAML syntax error: mapping values are not allowed in this context"),
    ("# nothing here\n", f"{FILE}: inventory is empty"),
    ("- a\n- b\n", f"{FILE}:1: an inventory must be a mapping of group names, got a list"),
    ("all:\n  vars:\n    ansible_group_priority: high\n",
     f"{FILE}:3: all.vars.ansible_group_priority: must be an integer, got a string"),
    ("all:\n  vars:\n    sglprep: fast\n", f"{FILE}:3: all.vars.sglprep: must be a mapping of settings, got a string"),
    ("all:\n  hosts:\n    a:\n      sglprep_state: 3\n",
     f"{FILE}:4: all.hosts.a.sglprep_state: must be the path of a state file, got a number"),
    ("all:\n  vars:\n    sglprep: {model..path: x}\n", f"{FILE}:3: all.vars.sglprep.model..path: empty part in dotted key"),
])
def test_input_errors(tmp_path, text, message):
    assert load_error(tmp_path, text) == message


@pytest.mark.parametrize("text, message", [
    ("a:\n  children:\n    b:\n      children:\n        a:\n",
     f"{FILE}:5: a.children.b.children.a: group cycle: a -> b -> a"),
    ("a:\n  children:\n    a:\n", f"{FILE}:3: a.children.a: group cycle: a -> a"),
    ("a:\n  children:\n    b:\nb:\n  children:\n    c:\nc:\n  children:\n    a:\n",
     f"{FILE}:9: c.children.a: group cycle: a -> b -> c -> a"),
    ("gpu:\n  children:\n    all:\n", f"{FILE}:3: gpu.children.all: group cycle: all -> gpu -> all"),
    ("all: &top\n  children:\n    again: *top\n", f"{FILE}:1: all.children.again: recursive YAML alias (it contains itself)"),
])
def test_cycles_error(tmp_path, text, message):
    assert load_error(tmp_path, text) == message


@pytest.mark.parametrize("body, message", [
    ('"model.path": x\n      model:\n        path: y',
     f"{FILE}:6: all.vars.sglprep.model.path: set twice (first at line 4)"),
    ("model:\n        path: y\n      model.path: x",
     f"{FILE}:6: all.vars.sglprep.model.path: set twice (first at line 5)"),
    ("model: x\n      model.path: y",
     f"{FILE}:5: all.vars.sglprep.model.path: set twice (sglprep.model first at line 4)"),
    ("caches.flashinfer.mode: x\n      caches.flashinfer: y",
     f"{FILE}:5: all.vars.sglprep.caches.flashinfer: set twice (first at line 4)"),
])
def test_same_path_twice_in_one_mapping(tmp_path, body, message):
    text = f"all:\n  vars:\n    sglprep:\n      {body}\n"
    assert load_error(tmp_path, text) == message


def test_dotted_and_nested_spellings_merge_when_distinct(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            sglprep:
              model.path: x
              model:
                revision: main
              caches: {}
          hosts:
            a:
    """)
    assert inv.host("a").overrides == {"model": {"path": "x", "revision": "main"}, "caches": {}}


def test_unknown_host_and_group(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            gpu-[01:12]:
            b:
    """)
    with pytest.raises(InputError) as info:
        inv.host("nope")
    known = ", ".join(f"gpu-{n:02}" for n in range(1, 11))
    assert str(info.value) == f"{FILE}: host 'nope' is not in the inventory (known: {known}, …)"
    with pytest.raises(InputError) as info:
        inv.group_hosts("h100")
    assert str(info.value) == f"{FILE}: group 'h100' is not in the inventory (known: all, ungrouped)"


def test_unknown_host_lists_all_when_few(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            a:
            b:
    """)
    with pytest.raises(InputError) as info:
        inv.host("c")
    assert str(info.value) == f"{FILE}: host 'c' is not in the inventory (known: a, b)"


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as info:
        load_inventory(str(tmp_path / "nope.yaml"), "nope.yaml")
    assert str(info.value) == "nope.yaml: file not found"
