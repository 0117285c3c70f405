"""The suite's file order (``tests/harness/order.py``): the known-long files first,
longest first, the short unit and protocol tests last, each file's tests together and
in their own order."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.harness.order import SLOWEST, pytest_collection_modifyitems


def _items(*nodeids: str) -> list[Any]:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def test_long_files_run_first_and_short_ones_last_each_file_s_tests_in_order() -> None:
    items = _items("tests/unit/test_a.py::one", "tests/integration/test_x.py::one",
                   f"{SLOWEST[1]}::one", "tests/unit/test_a.py::two",
                   f"{SLOWEST[0]}::one", "tests/integration/test_x.py::two",
                   f"{SLOWEST[1]}::two", "tests/protocol/test_p.py::one")
    pytest_collection_modifyitems(items)
    assert [i.nodeid for i in items] == [
        f"{SLOWEST[0]}::one", f"{SLOWEST[1]}::one", f"{SLOWEST[1]}::two",
        "tests/integration/test_x.py::one", "tests/integration/test_x.py::two",
        "tests/unit/test_a.py::one", "tests/unit/test_a.py::two",
        "tests/protocol/test_p.py::one"]


def test_every_listed_long_file_exists() -> None:
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    assert [p for p in SLOWEST if not (root / p).is_file()] == []
