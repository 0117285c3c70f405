"""Fixtures for the multihost tests: they need root's right to make network namespaces.

They are skipped only when this process cannot create one (the refusal is the skip
reason, and is printed at the end of the run); anywhere else a failure to build the
network is a test failure.  Namespaces left by earlier runs that died before their
teardown are deleted first (only ours: ``ddsnet-*``/``ddsh-*`` whose maker is gone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.multihost.netns import Topology, clean_stale, namespaces_available

_probe: dict[str, str | None] = {}


def _refusal() -> str | None:
    """Why namespaces cannot be made here, asked of the kernel once per run."""
    if "reason" not in _probe:
        _probe["reason"] = namespaces_available()
    return _probe["reason"]


@pytest.fixture(scope="session", autouse=True)
def _namespaces() -> None:
    """Session-scoped so that it runs before any module's cluster fixture."""
    reason = _refusal()
    if reason is not None:
        pytest.skip(f"multihost: network namespaces unavailable: {reason}")
    clean_stale()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reason = _probe.get("reason")
    if reason is not None:
        terminalreporter.write_line(f"multihost tests skipped: network namespaces "
                                    f"unavailable: {reason}")


@pytest.fixture
def topologies() -> Iterator[Callable[..., Topology]]:
    """``make(n_hosts, ipv6=False)``: a topology deleted at the end of the test, also
    when the test fails."""
    made: list[Topology] = []

    def make(n_hosts: int, ipv6: bool = False) -> Topology:
        topo = Topology.create(n_hosts, ipv6=ipv6)
        made.append(topo)
        return topo
    yield make
    errors = []
    for topo in made:
        try:
            topo.destroy()
        except RuntimeError as e:
            errors.append(str(e))
    assert not errors, errors
