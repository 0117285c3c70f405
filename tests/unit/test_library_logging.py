"""The library logs through the standard ``logging`` module, under ``dds``, and leaves
Twisted's global log to the application (issue 14)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from dds.errors import Unavailable
from dds.lib import DDSClient


async def _refused(reactor: Any, host: str, port: int, **options: Any) -> Any:
    raise Unavailable(f"cannot connect to {host}:{port}: ECONNREFUSED")


def _client() -> DDSClient:
    return DDSClient(Clock(), ["127.0.0.1:7401"], cluster="dds", secret=b"s",
                     opener=_refused)


def _refresh_fails(client: DDSClient) -> None:
    """The periodic map refresh, with every brick refusing: the client warns."""
    Deferred.fromCoroutine(client._periodic_refresh())


def _coordinator_fails(client: DDSClient) -> None:
    """A coordinator failing unexpectedly after PREPARE (a malformed vote): it logs the
    failure with its traceback, and reports the write Indeterminate."""
    d = Deferred.fromCoroutine(client.coordinator._after_prepare(
        None, (1, 1), [], [{}], b"k", 0.0))  # type: ignore[arg-type]
    d.addErrback(lambda f: None)


def test_a_library_warning_reaches_logging_under_the_dds_logger(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dds")
    _refresh_fails(_client())
    [record] = [r for r in caplog.records if "periodic map refresh failed" in r.getMessage()]
    assert record.name == "dds.lib.client.DDSClient"
    assert record.levelno == logging.WARNING
    assert "127.0.0.1:7401" in record.getMessage()


def test_a_library_failure_reaches_logging_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dds")
    _coordinator_fails(_client())
    [record] = [r for r in caplog.records if "failed after PREPARE" in r.getMessage()]
    assert record.name == "dds.lib.coordinator.Coordinator"
    assert record.levelno == logging.CRITICAL
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_library_events_never_reach_twisteds_global_log() -> None:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        client = _client()
        _refresh_fails(client)
        _coordinator_fails(client)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert [e for e in seen if str(e.get("log_namespace", "")).startswith("dds")] == []


def test_a_service_without_logging_configuration_sees_nothing_on_stderr() -> None:
    # A process of its own: pytest configures logging, a service may not have.
    script = textwrap.dedent("""
        from tests.unit.test_library_logging import (_client, _coordinator_fails,
                                                     _refresh_fails)
        client = _client()
        _refresh_fails(client)
        _coordinator_fails(client)
        print("done")
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "done", proc.stderr
    assert proc.stderr == ""
