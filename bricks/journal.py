"""The brick's journal of multi-step admin operations (DESIGN §8).

A reorganization (move, split, merge, add/remove brick) is driven by ``dds-admin`` and
takes many steps, any of which can be interrupted by a killed tool or a crashed brick.
Before it acts, the tool writes the operation's **plan** to the journal of every brick
involved, and after each step it records that step as **completed**; ``dds-admin repair``
later reads the journals, merges them (any one surviving brick is enough) and finishes or
rolls back what was left half done.  The journal itself never acts: it is the durable
memory of what the admin side decided and did.

Storage: ``journal.sqlite`` in the brick's data directory, two tables::

    jobs(job TEXT PRIMARY KEY, kind, plan JSON, state, created, updated)
    steps(job, seq, step JSON, at)            -- PRIMARY KEY (job, seq)

Every write is one SQLite transaction, as durable as the brick's data (DESIGN §4): a step
the tool was told is recorded must survive what the brick's acknowledged writes survive,
or repair would believe a step was never done (or, worse, that a plan never existed).  In
``fsync`` mode that is a power cut (``synchronous=FULL``); in ``disk`` and ``memory``
modes it is any crash of the process (WAL with ``synchronous=NORMAL``: no fsync on the
reactor thread, where a busy disk made one journal write cost 120 ms of everyone's
writes during a move's cut-over).  The file is opened on first use, so a
brick that is never part of a reorganization (and the simulation's many bricks) keeps no
extra file open.

Rules, all enforced here so that a confused or racing admin tool cannot corrupt a job:

- **Create** needs ``kind`` and ``plan`` together.  Creating an existing job again with
  the same kind and plan is a no-op (a retried write); with another one it is refused.
- **Steps** are maps with at least ``name``; ``at`` and ``seq`` are reserved (the reply
  adds them).  Recording a step again with the same data is a no-op; with other data, or
  on a finished job, it is refused.
- **States**: ``running`` and ``cancel-requested`` are unfinished; ``done``, ``failed``,
  ``cancelled`` and ``rolled-back`` are final.  A final state never changes again, and a
  cancel request is never turned back into ``running``: an operator's ``dds-admin
  cancel`` must not be undone by a tool racing with it.
- **Bounded**: finished jobs are kept for :data:`KEEP_FINISHED_S` (7 days) and at most
  the newest :data:`KEEP_FINISHED` (1000) of them; unfinished jobs are never dropped
  (they are what repair needs).

Plans and steps are JSON values (strings, numbers, booleans, null, lists, maps with
string keys); anything else is refused, so what is read back is exactly what was written.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dds.errors import InvalidRequest
from dds.messages import JournalRead, JournalWrite, Message
from dds.metrics import Metrics

if TYPE_CHECKING:
    from dds.bricks.partstore import Durability

__all__ = ["Journal", "JOURNAL_FILE", "STATES", "UNFINISHED", "FINAL", "KEEP_FINISHED",
           "KEEP_FINISHED_S"]

JOURNAL_FILE = "journal.sqlite"
SCHEMA_VERSION = 1
UNFINISHED = ("running", "cancel-requested")
FINAL = ("done", "failed", "cancelled", "rolled-back")
STATES = UNFINISHED + FINAL
#: Finished jobs older than this (by their last update) are dropped.
KEEP_FINISHED_S = 7 * 24 * 3600.0
#: At most this many finished jobs are kept (the newest).
KEEP_FINISHED = 1000
#: Keys of a step the journal adds to the reply, so a step may not carry them itself.
RESERVED_STEP_KEYS = ("at", "seq")
#: Job ids and kinds become log fields and command-line arguments: keep them plain.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_NESTING = 32

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (job TEXT PRIMARY KEY, kind TEXT NOT NULL, "
    "plan TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, "
    "updated REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, updated)",
    "CREATE TABLE IF NOT EXISTS steps (job TEXT NOT NULL, seq INTEGER NOT NULL, "
    "step TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (job, seq))",
)
_SQL_JOB = "SELECT job, kind, plan, state, created, updated FROM jobs WHERE job = ?"
_SQL_STEPS = "SELECT seq, step, at FROM steps WHERE job = ? ORDER BY seq"
_FINAL_SQL = ", ".join(f"'{s}'" for s in FINAL)


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """Refuse anything that would not come back from JSON exactly as it went in."""
    if depth > _MAX_NESTING:
        raise InvalidRequest(f"{where}: nested more than {_MAX_NESTING} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{where}: {value!r} is not a JSON number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InvalidRequest(f"{where}: key {k!r:.40} is not a string")
            _check_json(item, f"{where}.{k}", depth + 1)
        return
    raise InvalidRequest(f"{where}: a {type(value).__name__} is not a JSON value "
                         "(strings, numbers, booleans, null, lists and maps only)")


def _dump(value: Any) -> str:
    """JSON as stored: maps keep the order the tool gave (people read plans)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _canonical(value: Any) -> str:
    """Canonical JSON: equal values give equal text, so "same plan" is a string compare
    whatever order the keys came in."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_id(value: str, what: str) -> None:
    if not _ID_RE.fullmatch(value):
        raise InvalidRequest(f"journal: invalid {what} {value!r:.60} (1-128 characters: "
                             "letters, digits, '.', '_', ':', '-')")


class Journal:
    """The journal of one brick.  ``write`` and ``read`` are the handlers of the
    ``journal_write`` and ``journal_read`` requests; both are synchronous."""

    log = Logger()

    def __init__(self, data_dir: Path, clock: IReactorTime, metrics: Metrics, *,
                 durability: Durability = "fsync") -> None:
        self.path = Path(data_dir) / JOURNAL_FILE
        self.synchronous = "FULL" if durability == "fsync" else "NORMAL"
        self.clock = clock
        self.metrics = metrics
        self._conn: sqlite3.Connection | None = None

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {JournalWrite: self.write, JournalRead: self.read}

    # -- file ------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """The connection, opened (and the schema created, old jobs pruned) on first use."""
        if self._conn is not None:
            return self._conn
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise ValueError(f"{self.path}: schema version {found} is newer than "
                                 f"{SCHEMA_VERSION}")

            def schema() -> None:
                for sql in _SCHEMA:
                    conn.execute(sql)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._transaction(conn, schema)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        pruned = self._prune()
        unfinished = conn.execute(
            f"SELECT count(*) FROM jobs WHERE state NOT IN ({_FINAL_SQL})").fetchone()[0]
        self.log.info("journal {path} opened: {unfinished} unfinished jobs, {pruned} old "
                      "finished jobs dropped", path=str(self.path), unfinished=unfinished,
                      pruned=pruned)
        return conn

    @staticmethod
    def _transaction(conn: sqlite3.Connection, body: Callable[[], object]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            body()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- requests ----------------------------------------------------------------------------

    def write(self, msg: JournalWrite) -> dict[str, Any]:
        """Create job ``msg.job`` and/or record a step and/or set its state, in that
        order and in one transaction (so "last step + done" is one durable write).
        Reply: ``{"job": the job as stored}``."""
        _check_id(msg.job, "job id")
        creating = msg.kind is not None or msg.plan is not None
        if not (creating or msg.step is not None or msg.state is not None):
            raise InvalidRequest(f"journal_write for {msg.job}: nothing to write (give "
                                 "kind and plan, a step, or a state)")
        if creating:
            if msg.kind is None or msg.plan is None:
                raise InvalidRequest(f"journal_write for {msg.job}: creating a job needs "
                                     "both kind and plan")
            _check_id(msg.kind, "job kind")
            _check_json(msg.plan, "plan")
        if msg.step is not None:
            self._check_step(msg.job, msg.step)
        if msg.state is not None and msg.state not in STATES:
            raise InvalidRequest(f"journal_write for {msg.job}: unknown state "
                                 f"{msg.state!r:.40} (one of {', '.join(STATES)})")
        conn = self._db()
        now = self.clock.seconds()
        changes: list[str] = []

        def body() -> None:
            row = conn.execute(_SQL_JOB, (msg.job,)).fetchone()
            if creating:
                row = self._create(conn, msg, row, now, changes)
            if row is None:
                raise InvalidRequest(f"journal_write: unknown job {msg.job!r} (no "
                                     "journal entry on this brick; create it with kind "
                                     "and plan first)")
            state = row[3]
            if msg.step is not None:
                self._append(conn, msg.job, state, msg.step, now, changes)
            if msg.state is not None:
                self._set_state(conn, msg.job, state, msg.state, now, changes)
        self._transaction(conn, body)
        self.metrics.inc("journal_writes_total")
        if msg.state in FINAL and "state" in changes:
            self._prune()
        return {"job": self._job(msg.job)}

    def read(self, msg: JournalRead) -> dict[str, Any]:
        """One job (``[]`` when this brick has no such job: an admin tool asks every
        brick), or every job (only unfinished ones by default), newest first.  ``now``
        is this brick's clock, so the caller can tell ages without trusting its own."""
        conn = self._db()
        if msg.job is not None:
            found = conn.execute("SELECT job FROM jobs WHERE job = ?", (msg.job,)).fetchall()
        elif msg.unfinished:
            found = conn.execute(
                f"SELECT job FROM jobs WHERE state NOT IN ({_FINAL_SQL}) "
                "ORDER BY created DESC, job DESC").fetchall()
        else:
            found = conn.execute("SELECT job FROM jobs ORDER BY created DESC, "
                                 "job DESC").fetchall()
        jobs = [self._job(job) for (job,) in found]
        return {"jobs": [j for j in jobs if j is not None], "now": self.clock.seconds()}

    # -- the parts of a write -----------------------------------------------------------------

    @staticmethod
    def _check_step(job: str, step: dict[str, Any]) -> None:
        name = step.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"journal_write for {job}: a step needs a non-empty "
                                 "string 'name'")
        for key in RESERVED_STEP_KEYS:
            if key in step:
                raise InvalidRequest(f"journal_write for {job}: step {name!r} may not "
                                     f"carry {key!r} (the journal adds it)")
        _check_json(step, f"step {name!r}")

    def _create(self, conn: sqlite3.Connection, msg: JournalWrite,
                row: tuple[Any, ...] | None, now: float,
                changes: list[str]) -> tuple[Any, ...]:
        plan = _dump(msg.plan)
        if row is not None:
            if row[1] != msg.kind or _canonical(json.loads(row[2])) != _canonical(msg.plan):
                raise InvalidRequest(
                    f"journal_write: job {msg.job!r} already exists here with "
                    + (f"kind {row[1]!r}, not {msg.kind!r}" if row[1] != msg.kind
                       else "another plan"))
            return row
        conn.execute("INSERT INTO jobs (job, kind, plan, state, created, updated) "
                     "VALUES (?, ?, ?, 'running', ?, ?)", (msg.job, msg.kind, plan, now, now))
        changes.append("created")
        self.log.info("journal: job {job} created ({kind})", job=msg.job, kind=msg.kind)
        return (msg.job, msg.kind, plan, "running", now, now)

    def _append(self, conn: sqlite3.Connection, job: str, state: str,
                step: dict[str, Any], now: float, changes: list[str]) -> None:
        name = step["name"]
        text = _dump(step)
        for (stored,) in conn.execute("SELECT step FROM steps WHERE job = ?", (job,)):
            other = json.loads(stored)
            if other.get("name") == name:
                if _canonical(other) == _canonical(step):
                    return          # a retried write: already recorded
                raise InvalidRequest(f"journal_write: job {job!r} already has step "
                                     f"{name!r} with other data")
        if state in FINAL:
            raise InvalidRequest(f"journal_write: job {job!r} is {state}: no more steps")
        seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE job = ?",
                           (job,)).fetchone()[0]
        conn.execute("INSERT INTO steps (job, seq, step, at) VALUES (?, ?, ?, ?)",
                     (job, seq, text, now))
        conn.execute("UPDATE jobs SET updated = ? WHERE job = ?", (now, job))
        changes.append("step")
        self.log.info("journal: job {job} step {seq} {step} done", job=job, seq=seq,
                      step=name)

    def _set_state(self, conn: sqlite3.Connection, job: str, old: str, new: str,
                   now: float, changes: list[str]) -> None:
        if new == old:
            return
        if old in FINAL:
            raise InvalidRequest(f"journal_write: job {job!r} is already {old}; it cannot "
                                 f"become {new}")
        if old == "cancel-requested" and new == "running":
            raise InvalidRequest(f"journal_write: job {job!r} has a cancel request; it "
                                 "cannot become running again")
        conn.execute("UPDATE jobs SET state = ?, updated = ? WHERE job = ?", (new, now, job))
        changes.append("state")
        self.log.info("journal: job {job} {old} -> {new}", job=job, old=old, new=new)

    # -- reading and pruning --------------------------------------------------------------------

    def _job(self, job: str) -> dict[str, Any] | None:
        conn = self._db()
        row = conn.execute(_SQL_JOB, (job,)).fetchone()
        if row is None:
            return None
        steps = [{**json.loads(text), "seq": seq, "at": at}
                 for seq, text, at in conn.execute(_SQL_STEPS, (job,))]
        return {"job": row[0], "kind": row[1], "plan": json.loads(row[2]), "steps": steps,
                "state": row[3], "created": row[4], "updated": row[5]}

    def _prune(self) -> int:
        """Drop finished jobs older than a week, and all but the newest 1000 finished."""
        conn = self._db()
        cutoff = self.clock.seconds() - KEEP_FINISHED_S
        dropped: list[str] = []

        def body() -> None:
            old = conn.execute(
                f"SELECT job FROM jobs WHERE state IN ({_FINAL_SQL}) AND (updated < ? OR "
                f"job NOT IN (SELECT job FROM jobs WHERE state IN ({_FINAL_SQL}) "
                "ORDER BY updated DESC, job DESC LIMIT ?))",
                (cutoff, KEEP_FINISHED)).fetchall()
            for (job,) in old:
                conn.execute("DELETE FROM steps WHERE job = ?", (job,))
                conn.execute("DELETE FROM jobs WHERE job = ?", (job,))
                dropped.append(job)
        self._transaction(conn, body)
        if dropped:
            self.metrics.inc("journal_jobs_dropped_total", len(dropped))
            self.log.info("journal: dropped {n} old finished jobs", n=len(dropped))
        return len(dropped)
