"""The DR follower (DESIGN §12, issue 17): the primary's change stream, applied to the DR
site, and the DR site's progress reported back to the primary.

Each active partition of the primary is read page by page with ``DrRead`` (the change
cursor of ``lib/changes.py``, which follows moves and fails over between replicas), all
partitions at once.  A page's rows are routed through the DR site's own map and written
with ``dr_apply`` to every active member of each DR partition they belong to
(``sitewriter.py``); once all acknowledged, the page's end position is *applied*, and
the next read reports it (``applied``, made by ``applied_by``, the brick that served the
page): that is the tag the primary's votes carry and the client journals wait for.  An
empty page at the end of the stream is applied at once: its position's safe time is
fresh, so an idle partition's tag keeps up with the clock.

Which partitions, from where, splits and merges, and the checkpoint file: ``lineage.py``.
Without a checkpoint, each partition starts where the DR site's marks say it holds it
(``dr_marks``), else from the beginning.
The checkpoint is written at most once a second and when the follower stops; after a
crash it is at most that old, and the pages after it are applied again (idempotent by
version).  Every ``marks_s`` the applied positions also go, without rows, to every DR
partition (``dr_marks`` then tells ``dr promote`` how far each primary partition came),
and to every member of each primary partition's group (so every replica holds the tag).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger

from dds.deferreds import gather, sleep
from dds.drmsgs import DrMarks, DrRead
from dds.errors import DDSError, InvalidRequest
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.ratelimit import LogLimiter

from dds.lib.client import DDSClient
from dds.tools.bench.measure import percentile
from dds.tools.dr.lineage import (Checkpoint, Lineage, Part, load_checkpoint,
                                  safe_time, save_checkpoint)
from dds.tools.dr.sitewriter import FollowerStopped, SiteWriter

__all__ = ["Follower", "FollowerStopped", "FollowerSettings"]

#: Seconds one page read may take before it is tried again.
READ_TIMEOUT_S = 30.0


class FollowerSettings:
    """How the follower paces itself."""

    def __init__(self, *, poll_s: float = 0.25, page_rows: int = 1000,
                 parallel: int = 16, marks_s: float = 2.0,
                 checkpoint_s: float = 1.0) -> None:
        self.poll_s = poll_s
        self.page_rows = page_rows
        self.parallel = parallel
        self.marks_s = marks_s
        self.checkpoint_s = checkpoint_s


class Follower:
    log = Logger()

    def __init__(self, primary: DDSClient, site: DDSClient, state: Path, metrics: Metrics,
                 settings: FollowerSettings | None = None) -> None:
        self.primary = primary
        self.site = site
        self.clock = primary.clock
        self.state = state
        self.metrics = metrics
        self.settings = settings or FollowerSettings()
        self.primary_name = primary.cluster
        self.site_name = site.cluster
        self.lineage = Lineage()
        self.writer = SiteWriter(site, metrics, lambda: self.stopping)
        self.stopping = False
        self.rows = 0
        self.pages = 0
        self._slots = DeferredSemaphore(self.settings.parallel)
        self._tasks: dict[str, Deferred[None]] = {}
        self._done: Deferred[None] = Deferred()
        self._sleeps: set[Deferred[None]] = set()
        self._dirty = False
        #: Read failures, a few lines a window (a primary that is down fails every one).
        self._read_failures = LogLimiter(self.clock, self.log, per_window=5, window_s=10.0)
        metrics.gauge("partitions", lambda: len(self.lineage.running()))

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow until ``stop()`` (or a ``FollowerStopped`` it raises)."""
        saved = load_checkpoint(self.state, self.primary_name, self.site_name)
        held = {} if saved is not None else await self._held()
        active = [str(p) for p in self.primary.maps.map.partition_rg]
        parts = self.lineage.initial(active, saved.partitions if saved else {}, held)
        self.log.info("following {n} partitions of {primary} into {site} ({how})",
                      n=len(parts), primary=self.primary_name, site=self.site_name,
                      how=f"checkpoint {self.state}" if saved else
                      f"{len(held)} from the DR site's marks, the rest from the beginning")
        for part in parts:
            self._start(part)
        timers = [Deferred.fromCoroutine(self._every(self.settings.checkpoint_s,
                                                     self._checkpoint)),
                  Deferred.fromCoroutine(self._every(self.settings.marks_s, self._marks))]
        try:
            await self._done
        finally:
            self.stopping = True
            for d in list(self._sleeps):
                d.cancel()
            await gather(timers + list(self._tasks.values()))
            self.save()

    def stop(self) -> None:
        """Stop after the pages in flight (the checkpoint is written on the way out)."""
        if not self._done.called:
            self.stopping = True
            self._done.callback(None)

    def _fail(self, error: FollowerStopped) -> None:
        if not self._done.called:
            self.log.error("the DR follower stops: {error}", error=str(error))
            self.stopping = True
            self._done.errback(error)

    def _start(self, part: Part) -> None:
        self.metrics.gauge("lag_seconds", lambda: self._lag(part), partition=part.pid)
        d = Deferred.fromCoroutine(self._follow(part))
        self._tasks[part.pid] = d
        d.addErrback(self._crashed, part)

    def _lag(self, part: Part) -> float:
        """The partition's lag for ``/metrics`` (0 once its stream ended)."""
        lag = None if part.ended else part.lag(self.clock.seconds())
        return lag if lag is not None else 0.0

    def _crashed(self, failure: Any, part: Part) -> None:
        if isinstance(failure.value, FollowerStopped):
            self._fail(failure.value)
        else:
            self.log.failure("following {pid} failed", failure, pid=part.pid)
            self._fail(FollowerStopped(f"following {part.pid} failed: {failure.value!r}"))

    async def _follow(self, part: Part) -> None:
        cursor = self.primary.changes(part.pid, part.start, limit=self.settings.page_rows,
                                      timeout=READ_TIMEOUT_S)
        cursor.dr_applied = (part.applied, part.applied_by)
        attempt = 0
        while not self.stopping:
            await self._slots.acquire()
            try:
                try:
                    page = await cursor.next_page()
                except InvalidRequest as e:
                    raise FollowerStopped(f"the primary refused to read {part.pid} from "
                                          f"{part.saved[0][:24]}...: {e.message}") from None
                except DDSError as e:
                    attempt += 1
                    self.metrics.inc("errors_total", code=e.code)
                    self._read_failures.warn("reading {pid} from the primary failed "
                                             "({error}); attempt {attempt} in a moment",
                                             pid=part.pid, error=e.message,
                                             attempt=attempt + 1)
                    page = None
                if page is not None and page.changes:
                    rows = [(c.key, c.value, c.version) for c in page.changes]
                    mark = [page.position, int(safe_time(page.position) * 1000)]
                    await self.writer.apply(rows, {part.pid: mark})
                    self.rows += len(rows)
                    self.pages += 1
                    self.metrics.inc("rows_total", len(rows))
                    self.metrics.inc("pages_total")
            finally:
                self._slots.release()
            if page is None:
                await self._pause(min(5.0, 0.1 * 2 ** min(attempt, 6)))
                continue
            attempt = 0
            if page.ended:
                started = self.lineage.ended(part.pid, page.successors)
                self.log.info("{pid} split or merged into {successors}: following them",
                              pid=part.pid, successors=list(page.successors))
                for new in started:
                    self._start(new)
                self._dirty = True
                return
            part.took(page.position, cursor.brick or "")
            cursor.dr_applied = (part.applied, part.applied_by)
            self._dirty = True
            if not page.more:
                await self._pause(self.settings.poll_s)

    async def _pause(self, seconds: float) -> None:
        d = sleep(self.clock, seconds)
        self._sleeps.add(d)
        try:
            await d
        except Exception:
            pass                # cancelled: stopping
        finally:
            self._sleeps.discard(d)

    async def _every(self, seconds: float, fn: Any) -> None:
        while not self.stopping:
            await self._pause(seconds)
            if not self.stopping:
                try:
                    await fn()
                except FollowerStopped as e:
                    self._fail(e)
                except Exception:
                    self.log.failure("the DR follower's periodic {what} failed",
                                     what=getattr(fn, "__name__", "task"))

    # -- the primary's tags, the checkpoint, the marks ------------------------------------

    async def _held(self) -> dict[str, tuple[str, str]]:
        """Per primary partition, what the DR site holds by its marks: the oldest mark
        over every active DR partition (each by its most advanced member); a partition
        some DR partition has no mark of is not in it.  (Not the primary's tags: those
        may be a DR site's attached before this one.)"""
        from dds.tools.dr.status import marks_by_partition
        cmap = self.site.maps.map
        bricks = [cmap.bricks[b] for b in sorted(cmap.bricks)]

        async def ask(b: Any) -> dict[str, Any]:
            conn = await self.site.connections.get(b.address, b.port)
            reply: dict[str, Any] = await conn.send(DrMarks(), timeout=10.0)
            return reply
        replies: dict[str, Any] = {}
        for b, reply in zip(bricks, await gather(ask(b) for b in bricks)):
            if isinstance(reply, BaseException):
                self.log.warn("no marks from DR brick {brick}: {error}", brick=b.id,
                              error=getattr(reply, "message", str(reply)))
            replies[b.id] = reply
        marks = marks_by_partition(cmap, replies)
        everywhere = len(cmap.partition_rg)
        return {pid: (m["position"], "") for pid, m in marks.items()
                if m["dr_partitions"] == everywhere}

    def save(self) -> None:
        save_checkpoint(self.state, Checkpoint(self.primary_name, self.site_name,
                                               self.lineage.saved()))
        self._dirty = False

    async def _checkpoint(self) -> None:
        if self._dirty:
            self.save()

    async def _marks(self) -> None:
        marks = {p.pid: [p.applied, int(safe_time(p.applied) * 1000)]
                 for p in self.lineage.parts.values() if p.applied}
        if marks:
            await gather([self.writer.marks(marks), self._spread()])

    async def _spread(self) -> None:
        """The tags to every active member of each primary partition, not only the one
        the pages come from: a write's votes then all carry it, and a client's tag poll
        finds it on any replica.  A one-row ``DrRead`` from the applied position does it
        (failures are left to the next round)."""
        cmap = self.primary.maps.map
        sends = []
        for part in self.lineage.running():
            rg = cmap.partition_rg.get(PartitionId.parse(part.pid))
            if not part.applied or rg is None:
                continue
            msg = DrRead(part.pid, rg.name, rg.version, rg.fp, part.applied, 1,
                         applied=part.applied, applied_by=part.applied_by)
            sends += [self._tell(cmap.bricks[b], msg) for b in rg.active_members
                      if b in cmap.bricks]
        for result in await gather(sends):
            if isinstance(result, DDSError):
                self.metrics.inc("errors_total", code=result.code)

    async def _tell(self, brick: Any, msg: DrRead) -> None:
        conn = await self.primary.connections.get(brick.address, brick.port)
        await conn.send(msg, timeout=10.0)

    # -- reporting -----------------------------------------------------------------------

    def lags(self) -> list[float]:
        now = self.clock.seconds()
        return sorted(lag for p in self.lineage.running()
                      if (lag := p.lag(now)) is not None)

    def summary(self) -> dict[str, Any]:
        lags = self.lags()
        running = self.lineage.running()
        return {"partitions": len(running),
                "rows": self.rows, "pages": self.pages,
                "errors": int(self.metrics.value("errors_total")),
                "lag_p50_s": percentile(lags, 0.5), "lag_p99_s": percentile(lags, 0.99),
                "lag_max_s": lags[-1] if lags else 0.0}
