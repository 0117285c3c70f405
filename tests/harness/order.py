"""The order test files run in: the longest first.

``make test`` runs the suite in two pytest-xdist workers, a whole file at a time per worker
(``--dist loadfile``), each worker taking the next file when it is done with one.  A long
file taken last is a tail during which the other worker has nothing left to do (the
fault runner's ``ci`` profile, a minute and more, used to start nine minutes in, when
xdist's own order, by number of tests, reached its one test).  So the files known to be
long go first, longest first, then the other files that start bricks or processes, then
the unit, protocol and verification tests, which are many and short and fill the end.
The Makefile passes ``--no-loadscope-reorder`` so that xdist keeps this order.

``SLOWEST`` is measured: the files' wall times in ``DDS_TEST_TIMING`` runs
(``python -m tests.harness.timing``), longest first; a file missing from it only runs
later than it could."""

from __future__ import annotations

import pytest

SLOWEST = (
    "tests/multihost/test_deploy_guide.py",
    "tests/integration/test_reorg_crash.py",
    "tests/sim/test_simulation.py",
    "tests/multihost/test_multihost_cluster.py",
    "tests/faults/test_ci_profile.py",
    "tests/integration/test_admin.py",
    "tests/integration/test_failures.py",
    "tests/integration/test_grow_shrink.py",
    "tests/integration/test_damage.py",
    "tests/integration/test_move.py",
    "tests/integration/test_txns.py",
    "tests/integration/test_full_disk.py",
    "tests/integration/test_split.py",
    "tests/integration/test_admin_reorg.py",
    "tests/integration/test_admin_forget.py",
)

#: Directories of short tests, which go last.
SHORT = ("tests/unit/", "tests/protocol/", "tests/verify/")


def rank(path: str) -> tuple[int, int]:
    if path in SLOWEST:
        return (0, SLOWEST.index(path))
    return (2, 0) if path.startswith(SHORT) else (1, 0)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files by ``rank``; a file's tests stay together and in their order (a stable
    sort), as module-scoped fixtures need."""
    items.sort(key=lambda item: rank(item.nodeid.split("::")[0]))
