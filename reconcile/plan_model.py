"""Typed plan data: a `Change` per resource, the ordered `Plan`, and the
`Result` an executor returns for a change.

Changes are plain data with an address (`type:name`), an action from a closed
set, a machine-readable `reason`, a human `message`, the `before`/`after`
values (Ansible's module contract) and the facts they relied on (`observed`,
which feeds the plan fingerprint). Renderers and executors read these objects
and nothing else.

The executor contract lives here too, beside the data it consumes: an
executor is anything with `execute(change) -> Result`; apply dispatches
through a closed `{type: executor}` table.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

FORMAT_VERSION = "1"
ACTIONS = ("create", "update", "replace", "delete", "run", "noop", "blocked")
SYMBOLS = {"create": "+", "update": "~", "replace": "~", "delete": "-", "run": ">", "noop": "=", "blocked": "!"}
SUMMARY_WORDS = {"create": "to create", "update": "to update", "replace": "to replace", "delete": "to delete",
                 "run": "to run", "blocked": "blocked"}


class Change(NamedTuple):
    address: str
    action: str
    reason: str
    message: str = ""
    depends_on: tuple = ()
    before: Any = None
    after: Any = None
    observed: Any = None  # the facts this change was computed from (fingerprint input)
    diff: str = ""  # unified diff, for files
    show: bool = True  # a noop worth printing (it carries information)
    warnings: tuple = ()
    cause: str = ""  # corrective (the host moved away from the last apply) | intentional (the state changed)

    @property
    def type(self) -> str:
        return self.address.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.address.split(":", 1)[1]

    @property
    def is_change(self) -> bool:
        return self.action not in ("noop", "blocked")

    def text(self) -> str:
        """What follows type and name in the human plan: `create, owner 1:1`."""
        if not self.message:
            return self.action if self.action != "noop" else f"noop: {self.reason}"
        sep = ", " if self.action == "create" else ": "
        return f"{self.action}{sep}{self.message}"

    def to_json(self) -> dict:
        out = {
            "address": self.address,
            "type": self.type,
            "name": self.name,
            "action": self.action,
            "reason": self.reason,
            "message": self.message,
            "depends_on": list(self.depends_on),
            "before": self.before,
            "after": self.after,
        }
        if self.cause:
            out["cause"] = self.cause
        if self.diff:
            out["diff"] = self.diff
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Change":
        return cls(address=data["address"], action=data["action"], reason=data.get("reason", ""),
                   message=data.get("message", ""), depends_on=tuple(data.get("depends_on", ())),
                   before=data.get("before"), after=data.get("after"), diff=data.get("diff", ""),
                   warnings=tuple(data.get("warnings", ())), cause=data.get("cause", ""))


# What an executor did with one change.
CHANGED, UNCHANGED, FAILED, SKIPPED = "changed", "unchanged", "failed", "skipped"
RESULT_STATUSES = (CHANGED, UNCHANGED, FAILED, SKIPPED)


class Result(NamedTuple):
    address: str
    action: str
    status: str  # changed | unchanged | failed | skipped
    message: str = ""
    error_type: str = ""

    def to_json(self) -> dict:
        out = {"address": self.address, "action": self.action, "result": self.status, "message": self.message}
        if self.error_type:
            out["error_type"] = self.error_type
        return out


class Executor(Protocol):
    """Carries out one planned change (re-checking it against fresh facts
    first) and says what happened."""

    def execute(self, change: Change) -> Result: ...


class Plan:
    """The ordered changes of one host. The fingerprint is computed from
    `fingerprint_parts` on first use (a text plan never needs it)."""

    def __init__(self, host: str, state_file: str, fingerprint: str | None = None, changes: list | None = None,
                 warnings: list | None = None, fingerprint_parts: list | None = None,
                 last_apply_at: float | None = None, overrides: tuple = (), last_apply_exit_code: int | None = None,
                 last_success_at: float | None = None):
        self.host, self.state_file = host, state_file
        self.last_apply_exit_code = last_apply_exit_code  # of the last apply's record, None without one
        self.last_success_at = last_success_at  # epoch of the last apply that exited 0
        self.overrides = tuple(overrides)  # -e/--set KEY=VALUE given for this run
        self.last_apply_at = last_apply_at  # epoch of the last apply's record, None when there is none
        self._fingerprint = fingerprint
        self._parts = fingerprint_parts
        self.changes = changes if changes is not None else []
        self.warnings = warnings if warnings is not None else []
        bad = [c.address for c in self.changes if c.action not in ACTIONS]
        if bad:
            raise ValueError(f"unknown action for {', '.join(bad)}")

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self._parts)
        return self._fingerprint

    def summary(self) -> dict:
        counts = dict.fromkeys(ACTIONS, 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts

    def causes(self) -> dict:
        """Changes (blocked included) by cause: corrective | intentional."""
        counts = {"corrective": 0, "intentional": 0}
        for change in self.changes:
            if change.action != "noop" and change.cause in counts:
                counts[change.cause] += 1
        return counts

    @property
    def pending(self) -> list:
        """Changes apply would make (blocked ones excluded)."""
        return [c for c in self.changes if c.is_change]

    @property
    def blocked(self) -> list:
        return [c for c in self.changes if c.action == "blocked"]

    def find(self, address: str) -> Change | None:
        for change in self.changes:
            if change.address == address:
                return change
        return None

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "host": self.host,
            "state_file": self.state_file,
            "fingerprint": self.fingerprint,
            "summary": self.summary(),
            "causes": self.causes(),
            "last_apply_at": self.last_apply_at,
            "overrides": list(self.overrides),
            "changes": [c.to_json() for c in self.changes],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(host=data["host"], state_file=data["state_file"], fingerprint=data["fingerprint"],
                   changes=[Change.from_json(c) for c in data["changes"]],
                   warnings=list(data.get("warnings", ())), last_apply_at=data.get("last_apply_at"),
                   overrides=tuple(str(o) for o in data.get("overrides") or () if isinstance(o, str)))

    def render_compact(self) -> str:
        """Deterministic one-line-per-change form, for tests (compose's Plan.String())."""
        lines = []
        for c in self.changes:
            deps = ",".join(c.depends_on)
            lines.append(f"[{deps}] {c.address} {c.action} {c.reason}: {c.message}".rstrip(": "))
        return "\n".join(lines) + ("\n" if lines else "")


def canonical_json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(parts: list) -> str:
    from .digest import sha256_hex

    return sha256_hex(canonical_json(parts).encode())
