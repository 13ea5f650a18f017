"""Diff of `telemetry:prometheus`: the Prometheus server sglprep keeps for a
local runtime. Pure: desired values and the service fact in, one Change out."""
from __future__ import annotations

from .facts_host import ServiceFact
from .plan_model import Change

PID_FILE = "telemetry/prometheus/prometheus.pid"
TSDB_DIR = "telemetry/prometheus/data"


def diff_prometheus(state: str, want_argv: list, fact: ServiceFact, listen: str, port_holder: str = "") -> Change:
    """`want_argv`: the command line sglprep starts it with (its config, TSDB
    and listen address); a running server with another command line is
    restarted. `port_holder`: who holds the listen port when it is not ours."""
    address = "telemetry:prometheus"
    depends = ("directory:telemetry/prometheus", "file:telemetry/prometheus/prometheus.yml")
    observed = {"kind": fact.kind, "pid": fact.pid, "argv": list(fact.argv), "binary": fact.binary}
    before = {"pid": fact.pid, "argv": list(fact.argv)} if fact.kind == "running" else None
    after = {"argv": want_argv, "listen": listen} if state == "running" else None
    common = dict(depends_on=depends, before=before, after=after, observed=observed)
    if state == "absent":
        if fact.kind == "running":
            return Change(address, "delete", "state_absent", f"stop pid {fact.pid} (telemetry.prometheus.state: "
                          f"absent)", **common)
        return Change(address, "noop", "absent", "not running", show=False, **common)
    if not fact.binary:
        return Change(address, "blocked", "binary_missing",
                      f"no Prometheus binary ({want_argv[0] if want_argv else 'prometheus'}) → apt install "
                      f"prometheus, or set telemetry.prometheus.binary", **common)
    if fact.kind == "running":
        if list(fact.argv) != list(want_argv):
            return Change(address, "update", "argv_changed", f"restart pid {fact.pid}: its command line differs "
                          f"(listen {listen})", **common)
        return Change(address, "noop", "ok", f"running, pid {fact.pid}, on {listen}", show=False, **common)
    if port_holder:
        return Change(address, "blocked", "port_busy", f"{listen} is held by {port_holder} → stop it, or point "
                      f"telemetry.prometheus_url at a free port", **common)
    return Change(address, "create", "not_running", f"start {fact.binary} on {listen}, TSDB {TSDB_DIR}, "
                  f"as the storage owner", **common)
