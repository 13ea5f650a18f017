"""Shared test plumbing: the reliability table.

Reliability tests record `(trials, held)` per finding with the
`reliability` fixture; the session ends by printing one table of them (the
README's reliability section quotes it)."""
from __future__ import annotations

import pytest

from registry_fixture import registry, token_registry  # noqa: F401 - loopback OCI registries for the bundle and fleet tests

RESULTS: dict = {}


def record(name: str, trials: int, held: int) -> None:
    before = RESULTS.get(name, (0, 0))
    RESULTS[name] = (before[0] + trials, before[1] + held)


@pytest.fixture
def reliability():
    return record


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    width = max(len(name) for name in RESULTS)
    terminalreporter.write_sep("=", "reliability")
    terminalreporter.write_line(f"{'finding':<{width}}  {'trials':>7}  {'held':>7}")
    for name, (trials, held) in RESULTS.items():
        terminalreporter.write_line(f"{name:<{width}}  {trials:>7}  {held:>7}")
    trials = sum(t for t, _ in RESULTS.values())
    held = sum(h for _, h in RESULTS.values())
    terminalreporter.write_line(f"{'all':<{width}}  {trials:>7}  {held:>7}  ({100 * held / trials:.0f}% held)")
