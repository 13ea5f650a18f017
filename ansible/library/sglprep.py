#!/usr/bin/python
"""Ansible module: run sglprep on the target host.

Ansible resolves the host's variables (group_vars, host_vars, precedence)
and hands the merged `sglprep` mapping to this module, which passes each key
to sglprep as `-e KEY=VALUE`: sglprep reads no inventory of its own here, so
there is no second parser in the way. Check mode is `sglprep plan`, otherwise
`sglprep apply --auto-approve`.
"""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sglprep
short_description: Make a GPU host ready to serve SGLang (sglprep plan/apply)
description:
  - Runs C(sglprep plan) in check mode and C(sglprep apply --auto-approve) otherwise, on the target.
  - The host's merged C(sglprep) variable becomes C(-e KEY=VALUE) overrides of the state file.
options:
  state_file:
    description: The desired-state file on the target (C(sglprep -f)).
    type: path
    required: true
  host:
    description: The host name sglprep reports (plans, metrics); usually C(inventory_hostname).
    type: str
    required: true
  settings:
    description: State keys for this host (the merged C(sglprep) variable); dotted or nested.
    type: dict
    default: {}
  only:
    description: Apply only these resource addresses (and what they depend on).
    type: list
    elements: str
    default: []
  executable:
    description: How to start sglprep on the target.
    type: list
    elements: str
    default: [sglprep]
  textfile:
    description: Also write node_exporter textfile metrics (plan only).
    type: path
"""

EXAMPLES = r"""
- name: prime the caches
  sglprep:
    state_file: /etc/sglprep/h200.yaml
    host: "{{ inventory_hostname }}"
    settings: "{{ sglprep | default({}) }}"
"""

RETURN = r"""
changes:
  description: The plan's changes that are not noops (address, action, reason, message).
  returned: always
  type: list
result_status:
  description: The RESULT_STATUS line of the apply.
  returned: when applied
  type: str
exit_code:
  description: sglprep's exit code (plan 2 means changes; Ansible would read a non-zero `rc` as failure).
  returned: always
  type: int
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def flatten(settings, prefix=""):
    """{'model': {'path': 'x'}, 'caches.flashinfer': 'skip'} -> [('model.path', 'x'), ('caches.flashinfer', 'skip')]"""
    out = []
    for key, value in settings.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.extend(flatten(value, path))
        else:
            out.append((path, value))
    return out


def diff_of(changes):
    """Ansible's --diff: one entry per change; files carry their unified diff."""
    out = []
    for change in changes:
        if change.get("diff"):
            out.append({"prepared": change["diff"]})
        else:
            out.append({"before_header": change["address"], "after_header": change["address"],
                        "before": json.dumps(change.get("before"), indent=2, sort_keys=True) + "\n",
                        "after": json.dumps(change.get("after"), indent=2, sort_keys=True) + "\n"})
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state_file=dict(type="path", required=True),
            host=dict(type="str", required=True),
            settings=dict(type="dict", default={}),
            only=dict(type="list", elements="str", default=[]),
            executable=dict(type="list", elements="str", default=["sglprep"]),
            textfile=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    with tempfile.TemporaryDirectory(prefix="sglprep-ansible-") as tmp:
        inventory = os.path.join(tmp, "inventory.yaml")
        with open(inventory, "w") as fh:  # this host only: its vars come as -e, already merged by Ansible
            fh.write(json.dumps({"all": {"hosts": {p["host"]: {"ansible_connection": "local"}}}}))
        argv = list(p["executable"]) + ["-f", p["state_file"], "-i", inventory, "--limit", p["host"]]
        for key, value in flatten(p["settings"]):
            argv += ["-e", f"{key}={json.dumps(value)}"]
        if module.check_mode:
            argv += ["plan", "--json", "--detailed-exitcode"] + (["--textfile", p["textfile"]] if p["textfile"]
                                                                   else [])
        else:
            argv += ["apply", "--auto-approve", "--json"] + (["--only"] + p["only"] if p["only"] else [])
        rc, out, err = module.run_command(argv, environ_update={"NO_COLOR": "1"})
    try:
        doc = json.loads(out)
    except ValueError:
        module.fail_json(msg=(err.strip().splitlines() or [f"sglprep exited {rc}"])[-1], exit_code=rc, stdout=out,
                         stderr=err, cmd=argv)
    plan = doc if module.check_mode else doc.get("plan", {})
    changes = [c for c in plan.get("changes", []) if c.get("action") != "noop"]
    blocked = [c for c in changes if c.get("action") == "blocked"]
    result = dict(exit_code=rc, changes=[{k: c.get(k) for k in ("address", "action", "reason", "message")}
                                  for c in changes], stderr=err)
    if module._diff:
        result["diff"] = diff_of([c for c in changes if c.get("action") != "blocked"])
    if module.check_mode:
        result["changed"] = rc == 2
        if rc not in (0, 2):
            msg = blocked[0]["message"] if blocked else (err.strip().splitlines() or ["plan failed"])[-1]
            module.fail_json(msg=f"{blocked[0]['address']}: {msg}" if blocked else msg, **result)
        module.exit_json(**result)
    results = doc.get("results", [])
    result["changed"] = any(r.get("result") == "changed" for r in results)
    result["result_status"] = doc.get("result_status")
    result["result_json"] = doc.get("result_json")
    if rc != 0:
        failed = [r for r in results if r.get("result") == "failed"]
        msg = f"{failed[0]['address']}: {failed[0]['message']}" if failed else \
            (err.strip().splitlines() or [f"sglprep apply exited {rc}"])[-1]
        module.fail_json(msg=msg, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
