"""Recording client operation histories for the consistency checkers.

Every client process owns one :class:`HistoryRecorder`, which keeps its operations in
memory and, when given a path, also appends them to a JSON-lines file: one line when an
operation is invoked (written and flushed at once, so a client killed mid-operation still
leaves its invocation behind) and one line when it completes.  :func:`load_histories`
merges the files of all processes of a run into one list of :class:`Op`.

Timestamps come from ``time.monotonic()``.  On Linux that is ``CLOCK_MONOTONIC``, which is
system-wide: readings taken by different processes on the same machine are directly
comparable, so the real-time order between operations of different client processes is
meaningful.  (It is *not* comparable across machines, nor across a reboot.)

File format, one JSON object per line; byte strings are hex-encoded, ``None`` is ``null``::

    {"ev": "invoke", "s": session, "p": process, "h": handle, "t": invoke_t,
     "kind": kind, "key": hex, "value": hex|null, "expected_version": int|null}
    {"ev": "complete", "s": session, "p": process, "h": handle, "t": complete_t,
     "status": status, "result_value": hex|null, "result_version": int|null,
     "error": str|null}

``s`` is a random id per recorder, so a restarted client that appends to the same file
with the same process number does not collide with its previous incarnation.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Literal, Self, cast, get_args

import attrs

#: ``bget`` is a bounded-staleness read; its bound (ms) is kept in ``expected_version``.
OpKind = Literal["put", "get", "remove", "create", "cas", "bget"]
Status = Literal["ok", "fail", "indeterminate"]

KINDS: frozenset[str] = frozenset(get_args(OpKind))
STATUSES: frozenset[str] = frozenset(get_args(Status))
WRITE_KINDS: frozenset[str] = frozenset({"put", "remove", "create", "cas"})


@attrs.frozen
class Op:
    """One client operation on one key, as the client saw it.

    ``status`` is ``ok`` (it happened, with the given result), ``fail`` (it definitely had
    no effect; ``error`` says why) or ``indeterminate`` (it may or may not have happened,
    at any time after ``invoke_t``).  ``complete_t`` is ``None`` for an operation that never
    completed (its client was killed); such an operation is always ``indeterminate``.
    ``result_value``/``result_version`` are what a ``get`` read, or (version only) the new
    version an ``ok`` write created.
    """

    process: int
    kind: OpKind
    key: bytes
    value: bytes | None
    expected_version: int | None
    invoke_t: float
    complete_t: float | None
    status: Status
    result_value: bytes | None
    result_version: int | None
    error: str | None

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _unhex(s: Any) -> bytes | None:
    return None if s is None else bytes.fromhex(cast(str, s))


@attrs.define
class _Pending:
    process: int
    kind: OpKind
    key: bytes
    value: bytes | None
    expected_version: int | None
    invoke_t: float
    done: Op | None = None

    def op(self) -> Op:
        if self.done is not None:
            return self.done
        return Op(self.process, self.kind, self.key, self.value, self.expected_version,
                  self.invoke_t, None, "indeterminate", None, None, None)

    def completed(self, t: float | None, status: str, result_value: bytes | None,
                  result_version: int | None, error: str | None) -> Op:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return Op(self.process, self.kind, self.key, self.value, self.expected_version,
                  self.invoke_t, t, cast(Status, status), result_value, result_version,
                  error)


class HistoryRecorder:
    """Records the operations of one client process.

    Thread-safe within one process (a lock guards the state and the file).  With ``path``
    every event is appended to that JSON-lines file and flushed immediately; the file is
    opened in append mode, so a restarted client may reuse it.
    """

    def __init__(self, process: int, path: str | Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.process = process
        self.path = None if path is None else Path(path)
        self._clock = clock
        self._session = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._ops: list[_Pending] = []
        self._file: IO[str] | None = None
        if self.path is not None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (long-lived)

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()

    def invoke(self, kind: OpKind, key: bytes, value: bytes | None = None,
               expected_version: int | None = None) -> int:
        """Record the invocation of an operation; returns its handle for :meth:`complete`."""
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        with self._lock:
            t = self._clock()
            handle = len(self._ops)
            self._ops.append(_Pending(self.process, kind, bytes(key), value,
                                      expected_version, t))
            self._write({"ev": "invoke", "s": self._session, "p": self.process,
                         "h": handle, "t": t, "kind": kind, "key": key.hex(),
                         "value": _hex(value), "expected_version": expected_version})
        return handle

    def complete(self, handle: int, status: Status, result_value: bytes | None = None,
                 result_version: int | None = None, error: str | None = None) -> None:
        """Record how the operation ``handle`` ended."""
        with self._lock:
            pending = self._ops[handle]
            if pending.done is not None:
                raise ValueError(f"operation {handle} already completed")
            t = self._clock()
            pending.done = pending.completed(t, status, result_value, result_version, error)
            self._write({"ev": "complete", "s": self._session, "p": self.process,
                         "h": handle, "t": t, "status": status,
                         "result_value": _hex(result_value),
                         "result_version": result_version, "error": error})

    def ops(self) -> list[Op]:
        """All operations so far, in invocation order; uncompleted ones are indeterminate."""
        with self._lock:
            return [p.op() for p in self._ops]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_lines(path: Path) -> Iterable[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield cast(dict[str, Any], json.loads(line))
        except json.JSONDecodeError:
            # A client killed mid-write leaves a truncated last line: ignore only that.
            if n == len(lines) - 1:
                return
            raise ValueError(f"{path}:{n + 1}: malformed history line") from None


def load_histories(paths: Iterable[str | Path]) -> list[Op]:
    """Merge the JSON-lines files of several recorders into one list, by invocation time.

    Invocations without a completion line become ``indeterminate`` with ``complete_t``
    ``None``.
    """
    pending: dict[tuple[int, str, int, int], _Pending] = {}
    for fileno, path in enumerate(paths):
        for rec in _parse_lines(Path(path)):
            ident = (fileno, str(rec.get("s", "")), int(rec["p"]), int(rec["h"]))
            if rec["ev"] == "invoke":
                kind = rec["kind"]
                if kind not in KINDS:
                    raise ValueError(f"{path}: unknown operation kind {kind!r}")
                key = _unhex(rec["key"])
                assert key is not None
                pending[ident] = _Pending(int(rec["p"]), cast(OpKind, kind), key,
                                          _unhex(rec.get("value")),
                                          rec.get("expected_version"), float(rec["t"]))
            elif rec["ev"] == "complete":
                p = pending.get(ident)
                if p is None:
                    raise ValueError(f"{path}: completion of unknown operation {ident}")
                p.done = p.completed(float(rec["t"]), rec["status"],
                                     _unhex(rec.get("result_value")),
                                     rec.get("result_version"), rec.get("error"))
            else:
                raise ValueError(f"{path}: unknown event {rec['ev']!r}")
    ops = [p.op() for p in pending.values()]
    ops.sort(key=lambda o: o.invoke_t)
    return ops
