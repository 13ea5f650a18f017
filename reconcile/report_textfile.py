"""node_exporter textfile metrics for a plan, written atomically, in the
exposition format of prometheus_client (its writer, not hand-made text).

`host` is the inventory host, or the machine's hostname for `localhost`
(every host would otherwise report as `localhost`).
"""
from __future__ import annotations

import time

from .journal import atomic_write
from .plan_model import Plan

DRIFT_ACTIONS = ("create", "update", "replace", "delete", "run", "blocked")
CAUSES = ("corrective", "intentional")


def host_label(host: str) -> str:
    if host in ("localhost", "127.0.0.1", "::1"):
        import socket

        return socket.gethostname() or host
    return host


def render_metrics(host: str, plan: Plan | None, now: float | None = None) -> str:
    """Metrics text. `plan` None: the plan itself failed (bad input, a fact
    that could not be gathered); only success=0 and the timestamp are exported."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    h = host_label(host)
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels=("host",)) -> Gauge:
        return Gauge(name, doc, list(labels), registry=registry)

    gauge("sglprep_plan_success", "Whether the last sglprep plan completed (1) or failed (0).").labels(
        host=h).set(1 if plan is not None else 0)
    gauge("sglprep_last_plan_timestamp_seconds", "Unix time the last sglprep plan finished.").labels(
        host=h).set(now if now is not None else time.time())
    if plan is not None:
        drift = gauge("sglprep_drift_changes", "Changes the last plan found, by action and cause (corrective: the "
                      "host moved away from the last apply; intentional: the desired state changed).",
                      ("host", "action", "cause"))
        by = {(a, c): 0 for a in DRIFT_ACTIONS for c in CAUSES}
        for change in plan.changes:
            if change.action in DRIFT_ACTIONS and change.cause in CAUSES:
                by[(change.action, change.cause)] += 1
        for (action, cause), n in by.items():
            drift.labels(host=h, action=action, cause=cause).set(n)
        if plan.last_apply_at:
            gauge("sglprep_last_apply_timestamp_seconds", "Unix time of the last apply that left a record.").labels(
                host=h).set(plan.last_apply_at)
        if plan.last_apply_exit_code is not None:
            gauge("sglprep_apply_last_exit_code", "Exit code of the last apply (0 ok, 1 error, 3 stale plan, 4 "
                  "locked, 10-14 the failing stage, 130/143 interrupted).").labels(host=h).set(
                plan.last_apply_exit_code)
        if plan.last_success_at:
            gauge("sglprep_apply_last_success_timestamp_seconds", "Unix time of the last apply that exited 0.").labels(
                host=h).set(plan.last_success_at)
        blocked = gauge("sglprep_blocked", "Changes that need an operator, by resource address.",
                        ("host", "address"))
        for change in plan.blocked:
            blocked.labels(host=h, address=change.address).set(1)
    return generate_latest(registry).decode()


def write_textfile(path: str, host: str, plan: Plan | None) -> None:
    atomic_write(path, render_metrics(host, plan))
