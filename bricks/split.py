"""Split and merge of partitions in place (DESIGN §8), on each member of the RG.

A split replaces partition ``p`` by its two children, a merge replaces two sibling
partitions by their parent, both inside one RG.  Every active member holds every committed
write, so each member builds the new replica files **locally** from its own replica: no
bytes go between bricks.  ``dds-admin split|merge`` (``dds.tools.split``) drives the steps
and journals them; here is one member's side of each, for one *job* (an admin operation):

``prepare`` (``split_prepare``)
    In a worker thread, read a consistent snapshot of each source (a read-only SQLite
    connection in one read transaction, while the brick goes on committing) and route
    its rows, tombstones and versions included, by key hash into the target files, built
    with the partition schema under ``split-staging/`` (which the brick's "drop replicas
    no RG lists" never looks at).  Remember each source's log position, then catch up
    with the committed rows written since (``rows_since``), in rounds, while writes go on.
    A repeated prepare of the same job starts over.
``fence`` (``split_fence``, on one member, the *leader*)
    Fence writes to the sources (``Recovering``; the library retries), wait for the
    transactions in flight, flush.  Write-all means that this one fence stops every
    write to the sources in the RG.  It lapses after ``fence_s`` unless lifted first, so
    a dead admin tool cannot stop the writes for good; a lapsed fence makes the cut-over
    refuse (its ``token`` is gone), and the job is rolled back.  A tool that renews
    (``split_fence_renew``, ``dds.fencerenew``) names a much shorter lapse: the fences of
    the job then lapse that long after its last renewal, so a killed tool pauses writes
    for about that long, not ``fence_s``.
``finish`` (``split_finish``, on every member)
    Fence locally too, drain, flush, apply the last rows, and install each target file
    as this brick's replica (``Storage.replace_partition``).  The targets are listed
    *incoming* in the RG by then, so no map change drops them, and no client routes to
    them.  The local fence is what makes the last delta complete here: a transaction
    this member voted YES on before it is waited for.
``cutover`` (``split_cutover``, on the leader)
    Only if the leader's fence was held without a break (same token): the RG record
    change that removes the sources and makes the targets active, coordinated here with
    the fence pinned until the change is decided.  So no write to the sources can commit
    between any member's last delta and the new record.
``release`` / ``abort``
    Lift the job's fences, delete its staged files, forget it.  ``abort`` also bars any
    later cut-over of the job (waiting for one in flight).  A source replica is deleted
    by the brick once no RG lists it; a target replica of a rolled-back job likewise.

The job's state is in memory only: a brick that restarts forgets it (and deletes the
staged files), so ``finish`` and ``cutover`` are refused there and the job is rolled back
(or, past the cut-over, only released).  A job nobody asks about for ``EXPIRE_S`` is
forgotten the same way.  A member re-syncing the RG (a restarted brick the record still
lists active) refuses every step: its replicas may be stale, and its recovery is about
to replace them.
"""

from __future__ import annotations

import enum
import itertools
import os
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from dds.errors import (InternalError, InvalidRequest, NotServing, Refused, ReplicaDamaged,
                        Timeout)
from dds.fencerenew import STALL_S, SplitFenceRenew
from dds.messages import (Message, RGUpdate, SplitAbort, SplitCutover, SplitFence,
                          SplitFinish, SplitPrepare, SplitRelease, SplitStatus)
from dds.partition import PartitionId, key_hash
from dds.records import RGRecord

from dds.bricks.context import BrickContext
from dds.bricks.partstore import PartitionStore, Row
from dds.bricks.rowcheck import ChecksumMismatch, row_checksum

#: A fence of a job lapses this long after it was taken, unless lifted or pinned.
FENCE_S = 30.0
#: A job with no request for this long (and no cut-over in flight) is forgotten here.
EXPIRE_S = 600.0
#: Catch-up: rows read from a source per round (on the reactor thread), rounds at most
#: in ``prepare``, and a round this small ends ``prepare`` (``finish`` takes the rest).
ROUND_ROWS = 20_000
PREPARE_ROUNDS = 20
SMALL_ROUND = 1000
STAGING = "split-staging"
#: Ended jobs remembered, so that a late request for one is refused.
ENDED_MEMORY = 256

_JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INSERT = ("INSERT INTO kv (key, value, version, lsn, checksum) VALUES (?, ?, ?, ?, ?) "
           "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
           "version = excluded.version, lsn = excluded.lsn, checksum = excluded.checksum "
           "WHERE excluded.version >= kv.version")
_SET_LSN = "UPDATE meta SET value = max(CAST(value AS INTEGER), ?) WHERE name = 'last_lsn'"

Update = Callable[[RGUpdate], Awaitable[dict[str, Any]]]


class Phase(enum.Enum):
    PREPARING = "preparing"
    PREPARED = "prepared"
    FINISHING = "finishing"
    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"
    RELEASED = "released"
    EXPIRED = "expired"


def reshape(sources: Sequence[str], targets: Sequence[str]
            ) -> tuple[tuple[PartitionId, ...], tuple[PartitionId, ...]]:
    """Parse and check a job's shape: a split (one source, its two children) or a merge
    (two siblings, their parent).  InvalidRequest otherwise."""
    try:
        src = tuple(PartitionId.parse(s) for s in sources)
        dst = tuple(PartitionId.parse(t) for t in targets)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    try:
        if len(src) == 1 and dst == src[0].children():
            return src, dst
        if len(src) == 2 and len(dst) == 1 and src[0].depth > 0 \
                and src[0].sibling() == src[1] and dst[0] == src[0].parent():
            return src, dst
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    raise InvalidRequest(f"{list(sources)} -> {list(targets)} is neither a split (one "
                         "partition into its two children) nor a merge (two siblings "
                         "into their parent)")


# -- file work (worker thread) ----------------------------------------------------------------

@attrs.define
class Progress:
    """Rows routed so far, of about how many (written from the worker thread)."""

    done: int = 0
    total: int = 0


def build_targets(sources: Sequence[tuple[str, Path]], targets: Sequence[tuple[str, Path]],
                  progress: Progress | None = None) -> tuple[dict[str, int], int, int]:
    """Worker thread: create each target file (partition schema, ``PartitionStore``) and
    fill it with the rows of the sources' files that it owns, from one consistent read
    transaction per source.  Returns ``({source: lsn of its snapshot}, rows copied,
    rows that belong to no target)``.  The files are left complete (no -wal)."""
    progress = progress if progress is not None else Progress()
    owners = [(PartitionId.parse(t), path) for t, path in targets]
    for t, path in owners:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        PartitionStore(path, str(t)).close()        # the schema, as every replica has it
    outs = [_open(path) for _, path in owners]
    for out in outs:
        # No WAL while building: sealing would copy the whole build out of it, under the
        # fence.  (The brick's own connection turns WAL on again once it is installed.)
        out.execute("PRAGMA journal_mode=DELETE")
    lsns: dict[str, int] = {}
    copied = foreign = 0
    try:
        for out in outs:
            out.execute("BEGIN")
        for pid, path in sources:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0,
                                  isolation_level=None)
            try:
                src.execute("BEGIN")         # one read transaction: one consistent state
                meta = dict(src.execute("SELECT name, value FROM meta"))
                if meta.get("partition") != pid:
                    raise ValueError(f"{path} holds partition {meta.get('partition')!r}, "
                                     f"not {pid!r}")
                top = src.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
                lsns[pid] = max(int(top), int(meta.get("last_lsn") or 0))
                progress.total += src.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
                cur = src.execute("SELECT key, value, version, lsn, checksum FROM kv")
                while True:
                    rows = [_checked(pid, row) for row in cur.fetchmany(5000)]
                    if not rows:
                        break
                    batches: list[list[Row]] = [[] for _ in owners]
                    for row in rows:
                        i = _owner(owners, row[0])
                        if i is None:
                            foreign += 1
                        else:
                            batches[i].append(row)
                    for out, batch in zip(outs, batches):
                        if batch:
                            out.executemany(_INSERT, batch)
                            copied += len(batch)
                    progress.done += len(rows)
                src.execute("COMMIT")
            finally:
                src.close()
        top_lsn = max(lsns.values(), default=0)
        for out in outs:
            out.execute(_SET_LSN, (top_lsn,))
            out.execute("COMMIT")
    finally:
        for out in outs:
            out.close()
    return lsns, copied, foreign


def _checked(pid: str, row: Row) -> Row:
    """A source row verified against its checksum (ChecksumMismatch naming the partition
    and key if it fails), or given one if it has none yet (a file still migrating)."""
    key, value, version, lsn, checksum = row
    computed = row_checksum(key, version, value)
    if checksum is None:
        return (key, value, version, lsn, computed)
    if computed != checksum:
        raise ChecksumMismatch(pid, key, "source row")
    return row


def _open(path: Path) -> sqlite3.Connection:
    """A connection to a staged file.  No syncs while it is built: a crash loses the
    staged files anyway (the job rolls back); ``seal_targets`` makes them durable."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def _owner(owners: Sequence[tuple[PartitionId, Path]], key: bytes) -> int | None:
    h = key_hash(key)
    for i, (t, _) in enumerate(owners):
        if t.owns_hash(h):
            return i
    return None


def apply_to_targets(targets: Sequence[tuple[str, Path]], rows: Sequence[Row]
                     ) -> tuple[int, int]:
    """Worker thread: apply source rows (keeping versions and tombstones; a row never
    lowers a key's version) to the target files that own them.  Returns (applied,
    foreign)."""
    owners = [(PartitionId.parse(t), path) for t, path in targets]
    batches: list[list[Row]] = [[] for _ in owners]
    foreign = 0
    for row in rows:
        i = _owner(owners, row[0])
        if i is None:
            foreign += 1
        else:
            batches[i].append(_checked(str(owners[i][0]), row))
    top = max((row[3] for row in rows), default=0)
    for (_, path), batch in zip(owners, batches):
        conn = _open(path)
        try:
            conn.execute("BEGIN")
            conn.executemany(_INSERT, batch)
            conn.execute(_SET_LSN, (top,))
            conn.execute("COMMIT")
        finally:
            conn.close()
    return sum(len(b) for b in batches), foreign


def seal_targets(targets: Sequence[tuple[str, Path]], fsync: bool) -> dict[str, int]:
    """Worker thread: make each target file a standalone database (no -wal), fsynced when
    ``fsync``; return each one's live keys."""
    counts: dict[str, int] = {}
    for pid, path in targets:
        conn = _open(path)
        try:
            counts[pid] = conn.execute(
                "SELECT COUNT(*) FROM kv WHERE value IS NOT NULL").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
            if str(mode).lower() != "delete":
                raise sqlite3.OperationalError(f"{path} stuck in journal mode {mode}")
        finally:
            conn.close()
        if fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return counts


# -- the jobs ----------------------------------------------------------------------------------

class Fence:
    """One fence a job holds on its sources."""

    __slots__ = ("token", "since", "timer", "due", "pinned", "lifted", "why")

    def __init__(self, token: int, since: float) -> None:
        self.token = token
        self.since = since
        self.timer: IDelayedCall | None = None
        #: When the timer was meant to fire (a late one means this brick did not run).
        self.due = since
        self.pinned = False
        self.lifted: float | None = None
        self.why = ""


class Job:
    """One split or merge as this member sees it."""

    def __init__(self, job: str, sources: tuple[PartitionId, ...],
                 targets: tuple[PartitionId, ...], rg: str, gen: int, now: float) -> None:
        self.job = job
        self.sources = sources
        self.targets = targets
        self.rg = rg
        self.gen = gen
        self.phase = Phase.PREPARING
        self.progress = Progress()
        self.lsn: dict[str, int] = {}
        self.staged: dict[str, Path] = {}
        self.installed: set[str] = set()
        self.leader: Fence | None = None
        self.local: Fence | None = None
        #: The lapse its holder asked for by renewing (None: never renewed, ``fence_s``).
        self.lapse_s: float | None = None
        self.cutover: Deferred[None] | None = None
        self.result: dict[str, Any] | None = None
        self.caught_up = 0
        self.started = now
        self.last_request = now
        self.error = ""

    @property
    def kind(self) -> str:
        return "split" if len(self.sources) == 1 else "merge"

    def fences(self) -> list[Fence]:
        return [f for f in (self.leader, self.local) if f is not None and f.lifted is None]

    def to_wire(self, now: float) -> dict[str, Any]:
        def fence(f: Fence | None) -> dict[str, Any] | None:
            if f is None:
                return None
            return {"held": f.lifted is None, "pinned": f.pinned,
                    "held_s": (f.lifted if f.lifted is not None else now) - f.since,
                    "why": f.why}
        return {"kind": self.kind, "state": self.phase.value, "rg": self.rg,
                "sources": [str(p) for p in self.sources],
                "targets": [str(p) for p in self.targets],
                "rows_done": self.progress.done, "rows_total": self.progress.total,
                "caught_up": self.caught_up, "lsn": dict(self.lsn),
                "installed": sorted(self.installed), "leader_fence": fence(self.leader),
                "local_fence": fence(self.local),
                "fenced": bool(self.fences()), "cutover_in_flight": self.cutover is not None,
                "age_s": now - self.started, "error": self.error}


class Splits:
    """Every split/merge job this brick takes part in."""

    log = Logger()

    def __init__(self, ctx: BrickContext, work_dir: Path, update: Update, *,
                 fence_s: float = FENCE_S,
                 blocked: Callable[[str], bool] = lambda rg: False) -> None:
        self.id = ctx.id
        self.maps = ctx.maps
        self.storage = ctx.storage
        self.participant = ctx.participant
        self.clock = ctx.clock
        self.run_in_thread = ctx.run_in_thread
        self.work_dir = Path(work_dir)
        self.metrics = ctx.metrics
        self.update = update
        self.fence_s = fence_s
        self.fsync = ctx.fsyncs
        #: Whether this brick is re-syncing an RG (it serves nothing of it meanwhile).
        self.blocked = blocked
        self._rng = ctx.rng
        self.jobs: dict[str, Job] = {}
        self.ended: OrderedDict[str, str] = OrderedDict()
        self._gens = itertools.count(1)
        self._expiry: IDelayedCall | None = None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # Builds a restart interrupted: nobody can finish them (their jobs roll back).
        for stale in self.work_dir.iterdir():
            if stale.is_file():
                stale.unlink(missing_ok=True)

    # -- requests ------------------------------------------------------------------------

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {SplitPrepare: self.prepare, SplitFence: self.fence, SplitFinish: self.finish,
                SplitCutover: self.cutover, SplitRelease: self.release, SplitAbort: self.abort,
                SplitStatus: self.status, SplitFenceRenew: self.renew}

    def renew(self, msg: SplitFenceRenew) -> dict[str, Any]:
        """The job's tool is alive: its fences here lapse ``lapse_ms`` from now (a pinned
        one is held anyway until its cut-over is decided).  An unknown job is no error:
        the tool learns it from ``known``."""
        job = self.jobs.get(msg.job)
        if job is None:
            return {"held": [], "known": False}
        self._touch(job)
        job.lapse_s = msg.lapse_ms / 1000.0
        held = []
        for which, fence in (("leader", job.leader), ("local", job.local)):
            if fence is not None and fence.lifted is None:
                held.append(which)
                if not fence.pinned:
                    self._arm(job, fence)
        return {"held": held, "known": True}

    async def prepare(self, msg: SplitPrepare) -> dict[str, Any]:
        sources, targets = reshape(msg.sources, msg.targets)
        self._check_job_id(msg.job)
        if msg.job in self.ended:
            raise Refused(f"job {msg.job} was {self.ended[msg.job]} on brick {self.id}")
        rec = self._rg_of(sources)
        old = self.jobs.get(msg.job)
        if old is not None:
            if (old.sources, old.targets) != (sources, targets):
                raise InvalidRequest(f"job {msg.job} reshapes {[str(p) for p in old.sources]}"
                                     " here, not that")
            if old.fences() or old.phase in (Phase.FINISHING, Phase.FINISHED):
                raise Refused(f"job {msg.job} is {old.phase.value} here (fenced or past "
                              "its last delta): it cannot be prepared again")
            self._forget(old, Phase.PREPARING, "prepared again", remember=False)
        for other in list(self.jobs.values()):
            if set(other.sources + other.targets) & set(sources + targets):
                if other.cutover is not None:
                    raise Refused(f"job {other.job} is cutting over {other.sources} here")
                # The admin made the targets incoming for this job, which it only does
                # once no other job lists them: the older job is dead.  Forget it.
                self._forget(other, Phase.ABORTED, f"superseded by job {msg.job}")
        job = Job(msg.job, sources, targets, rec.name, next(self._gens), self.clock.seconds())
        self.jobs[msg.job] = job
        self._arm_expiry()
        job.staged = {str(t): self.work_dir / f"{msg.job}.{job.gen}.{t}.sqlite"
                      for t in targets}
        self.log.info("{kind} job {job}: building {targets} from {sources}", kind=job.kind,
                      job=job.job, targets=[str(t) for t in targets],
                      sources=[str(s) for s in sources])
        paths = [(str(s), self.storage.partition_path(str(s))) for s in sources]
        try:
            lsns, copied, foreign = await self.run_in_thread(
                build_targets, paths, list(job.staged.items()), job.progress)
        except ChecksumMismatch as e:
            self._failed(job, f"building the targets: {e}")
            raise ReplicaDamaged(f"job {msg.job}: {e.message}") from e
        except (sqlite3.Error, OSError, ValueError) as e:
            self._failed(job, f"building the targets: {e}")
            raise InternalError(f"job {msg.job}: building {[str(t) for t in targets]} "
                                f"failed: {e}") from e
        if self.jobs.get(job.job) is not job:
            self._drop_files(job)       # superseded while building: its files are stale
        self._still(job)
        job.lsn = lsns
        self._foreign(job, foreign)
        for _ in range(PREPARE_ROUNDS):
            n = await self._catch_up(job)
            if n < SMALL_ROUND:
                break
        job.phase = Phase.PREPARED
        self._touch(job)
        self.metrics.inc("split_prepares_total")
        self.log.info("{kind} job {job}: {rows} rows built, caught up to {lsn}",
                      kind=job.kind, job=job.job, rows=copied, lsn=job.lsn)
        return {"rows": copied + job.caught_up, "lsn": dict(job.lsn)}

    async def fence(self, msg: SplitFence) -> dict[str, Any]:
        job = self._job(msg.job)
        if job.phase not in (Phase.PREPARED, Phase.FINISHING, Phase.FINISHED):
            raise Refused(f"job {job.job} is {job.phase.value} here, not prepared")
        if job.leader is not None and job.leader.lifted is None:
            return {"token": job.leader.token}
        self._rg_of(job.sources)
        fence = job.leader = self._fence(job, "leader")
        await self._drain(job, fence)
        return {"token": fence.token}

    async def finish(self, msg: SplitFinish) -> dict[str, Any]:
        job = self._job(msg.job)
        if job.phase is Phase.FINISHED and job.result is not None:
            return job.result
        if job.phase is not Phase.PREPARED:
            raise Refused(f"job {job.job} is {job.phase.value} here, not prepared")
        rec = self._rg_of(job.sources)
        missing = [str(t) for t in job.targets if rec.partition_state(t) != "incoming"]
        if missing:
            raise Refused(f"{missing} not incoming in {rec.name} v{rec.version} on brick "
                          f"{self.id}")
        job.phase = Phase.FINISHING
        times: dict[str, float] = {}
        t0 = self.clock.seconds()

        def lap(name: str) -> None:
            nonlocal t0
            now = self.clock.seconds()
            times[name] = round(now - t0, 4)
            t0 = now
        try:
            if job.local is None or job.local.lifted is not None:
                job.local = self._fence(job, "local")
            await self._drain(job, job.local)
            lap("drain_s")
            rows = 0
            while True:             # under the fence nothing new commits: this ends
                n = await self._catch_up(job)
                rows += n
                if n == 0:
                    break
            lap("delta_s")
            counts = await self.run_in_thread(seal_targets, list(job.staged.items()),
                                              self.fsync)
            lap("seal_s")
            self._still(job)
            rec = self._rg_of(job.sources)
            for t in job.targets:
                if rec.partition_state(t) != "incoming":
                    raise Refused(f"{t} is no longer incoming in {rec.name} v{rec.version}")
                self.storage.replace_partition(str(t), job.staged[str(t)])
                job.installed.add(str(t))
            lap("install_s")
        except BaseException as e:
            if job.phase is Phase.FINISHING:
                self._failed(job, f"finish: {e}")
            if isinstance(e, (sqlite3.Error, OSError, ValueError)):
                raise InternalError(f"job {job.job}: finish failed: {e}") from e
            raise
        job.phase = Phase.FINISHED
        job.result = {"rows": rows, "counts": counts, "times": times}
        self._touch(job)
        self.metrics.inc("split_finishes_total")
        self.log.info("{kind} job {job}: installed {targets} ({counts}; {rows} last rows; "
                      "{times})", kind=job.kind, job=job.job, targets=sorted(job.installed),
                      counts=counts, rows=rows, times=times)
        return job.result

    async def cutover(self, msg: SplitCutover) -> dict[str, Any]:
        job = self._job(msg.job)
        fence = job.leader
        if fence is None or fence.lifted is not None or fence.token != msg.token:
            why = ("not taken here" if fence is None else
                   f"lifted ({fence.why})" if fence.lifted is not None else
                   "taken again since")
            raise Refused(f"job {job.job}: the fence with token {msg.token} is {why} on "
                          f"brick {self.id}: writes may have gone on; roll the job back")
        if job.phase is not Phase.FINISHED:
            raise Refused(f"job {job.job} is {job.phase.value} here, not finished")
        if job.cutover is not None:
            raise Refused(f"job {job.job}: a cut-over is in flight here")
        try:
            entries = {str(PartitionId.parse(p)): s for p, s in msg.partitions}
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"split_cutover: bad partitions: {e}") from None
        if any(str(s) in entries for s in job.sources) or \
                any(entries.get(str(t)) != "active" for t in job.targets):
            raise InvalidRequest(f"split_cutover: the new partitions must drop "
                                 f"{[str(s) for s in job.sources]} and list "
                                 f"{[str(t) for t in job.targets]} active")
        fence.pinned = True         # held, whatever its timer says, until this is decided
        done: Deferred[None] = Deferred()
        job.cutover = done
        self._touch(job)
        try:
            return await self.update(RGUpdate(rg=msg.rg, version=msg.version, fp=msg.fp,
                                              partitions=msg.partitions,
                                              reason=msg.reason))
        finally:
            fence.pinned = False
            if fence.lifted is None and job.lapse_s is not None:
                self._arm(job, fence)   # a tool gone meanwhile: lapse soon, not in fence_s
            job.cutover = None
            done.callback(None)
            self._touch(job)

    def release(self, msg: SplitRelease) -> dict[str, Any]:
        job = self.jobs.get(msg.job)
        if job is not None:
            self._forget(job, Phase.RELEASED, "released")
        return {}

    async def abort(self, msg: SplitAbort) -> dict[str, Any]:
        job = self.jobs.get(msg.job)
        self._remember(msg.job, Phase.ABORTED)
        if job is None:
            return {"cutover_in_flight": False}
        job.phase = Phase.ABORTED
        in_flight = job.cutover
        if in_flight is not None:
            await in_flight
        self._forget(job, Phase.ABORTED, msg.reason or "aborted")
        return {"cutover_in_flight": in_flight is not None}

    def status(self, msg: SplitStatus) -> dict[str, Any]:
        now = self.clock.seconds()
        jobs = {j.job: j.to_wire(now) for j in self.jobs.values()
                if msg.job is None or j.job == msg.job}
        out: dict[str, Any] = {"jobs": jobs}
        if msg.job is not None and msg.job not in jobs and msg.job in self.ended:
            out["ended"] = self.ended[msg.job]
        return out

    def close(self) -> None:
        """The brick stops: lift every fence (the jobs roll back)."""
        for job in list(self.jobs.values()):
            self._forget(job, Phase.ABORTED, f"brick {self.id} is stopping")
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()

    # -- internals -----------------------------------------------------------------------

    def _check_job_id(self, job: str) -> None:
        if not _JOB_RE.match(job):
            raise InvalidRequest(f"bad job id {job[:40]!r} (letters, digits, '.', '_', "
                                 "'-')")

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            ended = self.ended.get(job_id)
            raise Refused(f"job {job_id} is {ended} on brick {self.id}" if ended else
                          f"no job {job_id} on brick {self.id} (it restarted, or never "
                          "prepared it)")
        self._touch(job)
        return job

    def _rg_of(self, sources: Sequence[PartitionId]) -> RGRecord:
        """The RG where every source is active and this brick an active member, not
        re-syncing it (its replicas may be stale, and its recovery replaces them)."""
        for rec in self.maps.map.rgs.values():
            if all(s in rec.active_partitions for s in sources):
                if self.id not in rec.active_members:
                    raise NotServing(f"brick {self.id} is not an active member of "
                                     f"{rec.name}")
                if self.blocked(rec.name):
                    raise NotServing(f"brick {self.id} is re-syncing {rec.name} (it "
                                     "restarted): let it finish first")
                for s in sources:
                    if not self.storage.has_partition(str(s)):
                        raise NotServing(f"brick {self.id} holds no replica of {s}")
                return rec
        raise Refused(f"{[str(s) for s in sources]} are not all active in one RG on brick "
                      f"{self.id}")

    def _still(self, job: Job) -> None:
        """After a wait: the job must still be the current one here."""
        if self.jobs.get(job.job) is not job or job.phase in (Phase.ABORTED,
                                                              Phase.RELEASED,
                                                              Phase.EXPIRED):
            raise Refused(f"job {job.job} was {job.phase.value} on brick {self.id} "
                          "meanwhile")

    async def _catch_up(self, job: Job) -> int:
        """One round: the committed rows of each source since its last applied lsn (at
        most ``ROUND_ROWS`` each), applied to the target files.  Returns the rows."""
        rows: list[Row] = []
        lsns: dict[str, int] = {}
        for s in job.sources:
            text = str(s)
            if not self.storage.has_partition(text):
                raise NotServing(f"brick {self.id} holds no replica of {s} any more")
            store = self.storage.open_partition(text)
            top = store.committed_lsn()     # staged rows may still fail and be re-used
            last = job.lsn[text]
            n = 0
            for row in store.rows_since(last):
                if row[3] > top or n == ROUND_ROWS:
                    break
                rows.append(row)
                last = row[3]
                n += 1
            lsns[text] = last
        if rows:
            try:
                applied, foreign = await self.run_in_thread(
                    apply_to_targets, list(job.staged.items()), rows)
            except ChecksumMismatch as e:
                self._failed(job, f"catching up: {e}")
                raise ReplicaDamaged(f"job {job.job}: {e.message}") from e
            except (sqlite3.Error, OSError) as e:
                self._failed(job, f"catching up: {e}")
                raise InternalError(f"job {job.job}: catching up failed: {e}") from e
            self._still(job)
            self._foreign(job, foreign)
            job.caught_up += applied
        job.lsn.update(lsns)
        return len(rows)

    def _foreign(self, job: Job, n: int) -> None:
        if n:
            self.metrics.inc("split_foreign_rows_total", n)
            self.log.error("job {job}: {n} rows of {sources} belong to none of {targets}; "
                           "left out", job=job.job, n=n,
                           sources=[str(s) for s in job.sources],
                           targets=[str(t) for t in job.targets])

    def _fence(self, job: Job, which: str) -> Fence:
        fence = Fence(self._rng.getrandbits(62) + 1, self.clock.seconds())
        self.participant.fence(job.sources)
        self._arm(job, fence)
        self.metrics.inc("split_fences_total")
        self.log.info("job {job}: writes to {sources} fenced ({which})", job=job.job,
                      sources=[str(s) for s in job.sources], which=which)
        return fence

    async def _drain(self, job: Job, fence: Fence) -> None:
        """Wait for the sources' transactions in flight, then flush; on failure the fence
        is lifted."""
        bound = min(self.fence_s, self.participant.DRAIN_S)
        quiet = await self.participant.quiesce(job.sources, bound)
        if fence.lifted is not None:
            raise Refused(f"job {job.job}: fence lifted while draining ({fence.why})")
        if not quiet:
            busy = self.participant.busy(job.sources)
            self._lift(job, fence, f"{busy} transactions still in flight")
            raise Timeout(f"job {job.job}: {busy} transactions on "
                          f"{[str(s) for s in job.sources]} did not resolve within "
                          f"{bound:g}s; fence lifted")
        try:
            # The log is enough: the last delta serves staged rows up to the durable
            # position (``committed_lsn``), as a copy's does.  Committing every
            # partition file here too held the fence for a second of rows of every
            # partition (a member's drain took 3.96 s under faults and load).
            await self.storage.flush(files=False)
        except Exception as e:  # noqa: BLE001 -- any commit error lifts the fence
            self._lift(job, fence, f"flush failed: {e!r}")
            raise InternalError(f"job {job.job}: flush failed: {e}") from e

    def _arm(self, job: Job, fence: Fence) -> None:
        """(Re)start the fence's lapse: ``fence_s`` after it was taken at the latest,
        and ``lapse_s`` from now if its holder renews."""
        delay = max(0.0, fence.since + self.fence_s - self.clock.seconds())
        if job.lapse_s is not None:
            delay = min(delay, job.lapse_s)
        fence.due = self.clock.seconds() + delay
        if fence.timer is not None and fence.timer.active():
            fence.timer.reset(delay)
        else:
            fence.timer = self.clock.callLater(delay, self._lapse, job, fence)

    def _lapse(self, job: Job, fence: Fence) -> None:
        fence.timer = None
        if fence.lifted is not None:
            return
        if fence.pinned:
            self.log.warn("job {job}: fence held past its lapse while its cut-over is "
                          "decided", job=job.job)
            fence.timer = self.clock.callLater(self.fence_s, self._lapse, job, fence)
            return
        now = self.clock.seconds()
        held = now - fence.since
        if job.lapse_s is not None and held < self.fence_s and now - fence.due > STALL_S:
            # This brick did not run for a while (paused, starved): the renewals sent
            # meanwhile are still unread.  Its holder gets a whole lapse again.
            self.log.info("job {job}: fence lapse deferred: this brick did not run for "
                          "{late:.1f}s", job=job.job, late=now - fence.due)
            self._arm(job, fence)
            return
        self.metrics.inc("split_fences_lapsed_total")
        if job.lapse_s is not None and held < self.fence_s:
            why = f"lapsed: no renewal from its tool for {job.lapse_s:g}s"
        else:
            why = f"lapsed after {self.fence_s}s"
        self._lift(job, fence, why)

    def _lift(self, job: Job, fence: Fence, why: str) -> None:
        if fence.lifted is not None:
            return
        fence.lifted = self.clock.seconds()
        fence.why = why
        if fence.timer is not None and fence.timer.active():
            fence.timer.cancel()
        fence.timer = None
        self.participant.unfence(job.sources)
        self.log.warn("job {job}: fence on {sources} lifted after {held:.3f}s: {why}",
                      job=job.job, sources=[str(s) for s in job.sources],
                      held=fence.lifted - fence.since, why=why)

    def _failed(self, job: Job, why: str) -> None:
        job.phase = Phase.FAILED
        job.error = why
        if job.local is not None:
            self._lift(job, job.local, why)
        self.metrics.inc("split_failures_total")
        self.log.error("job {job} failed here: {why}", job=job.job, why=why)

    def _forget(self, job: Job, phase: Phase, why: str, remember: bool = True) -> None:
        job.phase = phase
        for fence in job.fences():
            self._lift(job, fence, why)
        self._drop_files(job)
        if self.jobs.get(job.job) is job:
            del self.jobs[job.job]
        if remember:
            self._remember(job.job, phase)
        self.log.info("job {job} {phase} here: {why}", job=job.job, phase=phase.value,
                      why=why)

    def _drop_files(self, job: Job) -> None:
        for t, path in job.staged.items():
            if t not in job.installed:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)

    def _remember(self, job: str, phase: Phase) -> None:
        self.ended[job] = phase.value
        self.ended.move_to_end(job)
        while len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)

    def _touch(self, job: Job) -> None:
        job.last_request = self.clock.seconds()

    def _arm_expiry(self) -> None:
        if self._expiry is None or not self._expiry.active():
            self._expiry = self.clock.callLater(EXPIRE_S / 4, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now = self.clock.seconds()
        for job in list(self.jobs.values()):
            if job.cutover is None and job.phase is not Phase.PREPARING \
                    and now - job.last_request >= EXPIRE_S:
                self._forget(job, Phase.EXPIRED, f"no request for {EXPIRE_S:.0f}s")
        if self.jobs:
            self._arm_expiry()


__all__ = ["EXPIRE_S", "FENCE_S", "Job", "Phase", "Splits", "apply_to_targets",
           "build_targets", "reshape", "seal_targets"]
