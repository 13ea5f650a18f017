"""node_exporter textfile metrics for a plan, written atomically."""
from __future__ import annotations

import time

from .journal import atomic_write
from .plan_model import Plan

DRIFT_ACTIONS = ("create", "update", "replace", "delete", "run", "blocked")
CAUSES = ("corrective", "intentional")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(host: str, plan: Plan | None, now: float | None = None) -> str:
    """Metrics text. `plan` None: the plan itself failed (bad input, a fact
    that could not be gathered); only success=0 and the timestamp are exported."""
    h = _label(host)
    lines = [
        "# HELP sglprep_plan_success Whether the last sglprep plan completed (1) or failed (0).",
        "# TYPE sglprep_plan_success gauge",
        f'sglprep_plan_success{{host="{h}"}} {1 if plan is not None else 0}',
        "# HELP sglprep_last_plan_timestamp_seconds Unix time the last sglprep plan finished.",
        "# TYPE sglprep_last_plan_timestamp_seconds gauge",
        f'sglprep_last_plan_timestamp_seconds{{host="{h}"}} {now if now is not None else time.time():.3f}',
    ]
    if plan is not None:
        by = {(a, c): 0 for a in DRIFT_ACTIONS for c in CAUSES}
        for change in plan.changes:
            if change.action in DRIFT_ACTIONS and change.cause in CAUSES:
                by[(change.action, change.cause)] += 1
        lines += ["# HELP sglprep_drift_changes Changes the last plan found, by action and cause (corrective: the "
                  "host moved away from the last apply; intentional: the desired state changed).",
                  "# TYPE sglprep_drift_changes gauge"]
        lines += [f'sglprep_drift_changes{{host="{h}",action="{a}",cause="{c}"}} {by[(a, c)]}'
                  for a in DRIFT_ACTIONS for c in CAUSES]
        if plan.last_apply_at:
            lines += ["# HELP sglprep_last_apply_timestamp_seconds Unix time of the last apply that left a record.",
                      "# TYPE sglprep_last_apply_timestamp_seconds gauge",
                      f'sglprep_last_apply_timestamp_seconds{{host="{h}"}} {plan.last_apply_at:.3f}']
        lines += ["# HELP sglprep_blocked Changes that need an operator, by resource address.",
                  "# TYPE sglprep_blocked gauge"]
        lines += [f'sglprep_blocked{{host="{h}",address="{_label(c.address)}"}} 1' for c in plan.blocked]
    return "\n".join(lines) + "\n"


def write_textfile(path: str, host: str, plan: Plan | None) -> None:
    atomic_write(path, render_metrics(host, plan))
