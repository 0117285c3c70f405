"""A client's side of disaster recovery (DESIGN §12): it keeps the journal, learns tags,
replays, and fails over.

- **Journal.**  A write whose votes carry ``at`` (the primary has a DR site attached) is
  kept in the ``DrJournal`` when it succeeds (``on_tagged``, called by the coordinator
  before the caller hears of the success); every vote's tag (``"dr"``) drops what it
  covers.  Once the journal is engaged, each write reserves room before its PREPARE is
  sent (``write``): ``JournalFull`` otherwise, at once or at its deadline.  A write on a
  primary without a DR site costs two attribute checks.
- **Tags without writes.**  While entries wait, a timer asks one replica of each of their
  partitions for its tag (``DrTags``), at most once a second per partition and only when
  no vote brought a newer tag in the last second (replicas taken in turn: the tag lives
  on the brick the DR follower reads from).
- **Failover** (``dr_failover="auto"``, with ``dr_site``).  When a call fails because
  the primary could not be reached (``Unavailable``, ``Timeout``, ``ConnectionLost``),
  or a tag poll does, or a write ends ``Indeterminate`` (it is not made again), the
  primary's bricks are asked for the map once more; if none
  answers and the DR site's DR record says it was promoted from this cluster (mode
  primary, epoch > 0, ``primary`` = our cluster's name), the journal is replayed there
  and every later call goes to the DR site; the call that failed is made again there,
  with its own timeout.  With ``manual``, ``dr_replay()`` replays on request and calls
  stay with the primary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.drmsgs import DrTags
from dds.errors import (ConnectionLost, DDSError, Indeterminate, InvalidRequest, NotPrimary,
                        Timeout, Unavailable)
from dds.partition import PartitionId
from dds.records import DRRecord

from dds.lib.drjournal import DrJournal, entry_size
from dds.lib.drreplay import ReplayReport, replay
from dds.lib.routing import Route

if TYPE_CHECKING:
    from dds.lib.client import DDSClient

#: Seconds between two looks at the waiting partitions, and the least time between two
#: tag polls of one partition (and since its last newer tag).
POLL_S = 1.0
#: Failures that say the primary could not be reached.
UNREACHABLE = (Unavailable, Timeout, ConnectionLost)
FAILOVER_MODES = ("auto", "manual")
_SITE_KEYS = frozenset({"seeds", "cluster", "url", "secret", "tls", "credentials", "role"})


def site_options(site: Mapping[str, Any]) -> dict[str, Any]:
    """``dr_site`` as ``DDSClient`` options: ``seeds`` (``["host:port", ...]``) and
    ``cluster``, or ``url`` (``dds://host:port[,host:port...]/CLUSTER``), and exactly
    one of ``secret`` / ``tls`` / ``credentials`` for the DR site (``role`` optional)."""
    if not isinstance(site, Mapping):
        raise InvalidRequest("dr_site must be a dict: seeds and cluster (or url) and one "
                             "of secret, tls, credentials")
    unknown = sorted(set(site) - _SITE_KEYS)
    if unknown:
        raise InvalidRequest(f"dr_site: unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(_SITE_KEYS))}")
    opts = {k: v for k, v in site.items() if k not in ("seeds", "cluster", "url")}
    if "url" in site:
        url = site["url"]
        if not isinstance(url, str) or not url.startswith("dds://") or "/" not in url[6:]:
            raise InvalidRequest(f"dr_site url {url!r:.80}: expected "
                                 "dds://host:port[,host:port...]/CLUSTER")
        hosts, _, name = url[6:].partition("/")
        seeds: Any = [h for h in hosts.split(",") if h]
        cluster: Any = name
    else:
        seeds, cluster = site.get("seeds"), site.get("cluster")
    if not isinstance(seeds, (list, tuple)) or not seeds \
            or not all(isinstance(s, str) for s in seeds):
        raise InvalidRequest("dr_site: seeds must be a non-empty list of 'host:port'")
    if not isinstance(cluster, str) or not cluster:
        raise InvalidRequest("dr_site: cluster (the DR site's cluster name) is required")
    if sum(1 for k in ("secret", "tls", "credentials") if site.get(k) is not None) != 1:
        raise InvalidRequest("dr_site: give exactly one of secret, tls, credentials")
    return {"seeds": list(seeds), "cluster": cluster, **opts}


def promoted_from(record: DRRecord | None, cluster: str) -> bool:
    """Whether a DR site's record says it was promoted from ``cluster``."""
    return (record is not None and record.promoted and record.primary == cluster)


class DrSide:
    """The DR part of one ``DDSClient`` (module docstring)."""

    def __init__(self, client: DDSClient, journal: DrJournal,
                 site: Mapping[str, Any] | None, failover: str) -> None:
        if failover not in FAILOVER_MODES:
            raise InvalidRequest(f"dr_failover must be one of {', '.join(FAILOVER_MODES)}, "
                                 f"not {failover!r:.40}")
        self.client = client
        self.journal = journal
        self.site = site_options(site) if site is not None else None
        self.auto = self.site is not None and failover == "auto"
        self.log: Logger = client.log
        #: The client of the promoted DR site once this client failed over to it.
        self.failed_over: DDSClient | None = None
        #: The last replay's report (a failover replays by itself).
        self.last_report: ReplayReport | None = None
        self._site_client: DDSClient | None = None
        self._waiters: list[Deferred[bool]] = []
        self._advanced: dict[PartitionId, float] = {}
        self._polled: dict[PartitionId, float] = {}
        self._turn: dict[PartitionId, int] = {}
        self._poll_call: Any = None
        self._closed = False

    # -- keeping writes ----------------------------------------------------------------

    def on_tagged(self, route: Route, body: dict[str, Any], version: int,
                  votes: list[Any]) -> None:
        """A write succeeded on an attached primary (``Coordinator.on_tagged``)."""
        at = {b.id: v["at"] for b, v in zip(route.replicas, votes)
              if type(v) is dict and type(v.get("at")) is int}
        now = self.client.clock.seconds()
        op = body["op"]
        self.journal.add(route.pid, body["key"], op, None if op == "remove" else body["value"],
                         version, at, int(now * 1000))
        for v in votes:
            tag = v.get("dr") if type(v) is dict else None
            if isinstance(tag, list) and len(tag) == 2 and type(tag[0]) is str \
                    and type(tag[1]) is int:
                self._tag(route.pid, tag[0], tag[1], now)
        self._schedule_poll()

    def _tag(self, pid: PartitionId, maker: str, safe_ms: int, now: float) -> None:
        if self.journal.tags.get(pid, {}).get(maker, -1) < safe_ms:
            self._advanced[pid] = now
        self.journal.tag(pid, maker, safe_ms)

    def write(self, key: bytes, op: str, value: bytes | None, expected: int | None,
              timeout: float | None) -> Deferred[int]:
        """A checked write: to the DR site once failed over; with room reserved in the
        journal once it is engaged; failing over on an unreachable primary (auto)."""
        site = self.failed_over
        if site is not None:
            return site._write(key, op, value, expected, timeout, value is not None)
        j = self.journal
        if j.engaged:
            size = entry_size(key, value)
            if j.reserve(size):
                d = self.client._write_checked(key, op, value, expected, timeout)
                d.addBoth(self._release, size)
            elif j.when_full == "fail":
                d = Deferred()
                d.errback(j.full_error(waited=False))
            else:
                d = Deferred.fromCoroutine(self._write_when_room(key, op, value, expected,
                                                                 timeout, size))
        else:
            d = self.client._write_checked(key, op, value, expected, timeout)
        if self.auto:
            d.addErrback(self._after_failure, lambda: self.write(key, op, value, expected,
                                                                 timeout))
        return d

    def _release(self, result: Any, size: int) -> Any:
        self.journal.release(size)
        return result

    async def _write_when_room(self, key: bytes, op: str, value: bytes | None,
                               expected: int | None, timeout: float | None,
                               size: int) -> int:
        """``dr_journal_when_full="wait"``: wait for room before the PREPARE, up to the
        write's deadline; then ``JournalFull`` (nothing was sent)."""
        clock = self.client.clock
        deadline = clock.seconds() + (timeout or self.client.timeout)
        j = self.journal
        while not j.reserve(size):
            remaining = deadline - clock.seconds()
            if remaining <= 0:
                raise j.full_error(waited=True)
            room = j.room()
            timer = clock.callLater(remaining, room.cancel)
            try:
                await room
            except CancelledError:
                pass
            finally:
                if timer.active():
                    timer.cancel()
        try:
            return await self.client._write_checked(key, op, value, expected,
                                                    max(deadline - clock.seconds(), 0.001))
        finally:
            j.release(size)

    def get(self, call: Callable[[], Deferred[Any]],
            again: Callable[[DDSClient], Deferred[Any]]) -> Deferred[Any]:
        """A read: ``call`` at the primary, or ``again`` at the DR site once failed over."""
        site = self.failed_over
        if site is not None:
            return again(site)
        d = call()
        if self.auto:
            d.addErrback(self._after_failure,
                         lambda: again(self.failed_over) if self.failed_over else call())
        return d

    # -- tags without writes -------------------------------------------------------------

    def _schedule_poll(self) -> None:
        if self._poll_call is None and not self._closed and len(self.journal):
            self._poll_call = self.client.clock.callLater(POLL_S, self._poll_tick)

    def _poll_tick(self) -> None:
        self._poll_call = None
        Deferred.fromCoroutine(self.poll()).addBoth(lambda _: self._schedule_poll())

    async def poll(self) -> None:
        """Ask for the tags of the partitions whose entries wait (module docstring)."""
        if self.failed_over is not None or not len(self.journal):
            return
        client = self.client
        now = client.clock.seconds()
        cmap = client.maps.map
        ask: dict[str, list[str]] = {}
        where: dict[str, Any] = {}
        for pid in self.journal.waiting():
            if now - self._advanced.get(pid, 0.0) < POLL_S \
                    or now - self._polled.get(pid, 0.0) < POLL_S:
                continue
            self._polled[pid] = now
            for q, rec in cmap.partition_rg.items():
                if not (q == pid or q.covers(pid) or pid.covers(q)):
                    continue
                members = [cmap.bricks[b] for b in rec.active_members if b in cmap.bricks]
                if not members:
                    continue
                turn = self._turn.get(q, 0)
                self._turn[q] = turn + 1
                brick = members[turn % len(members)]
                ask.setdefault(brick.id, []).append(str(q))
                where[brick.id] = brick
        failures: list[DDSError] = []
        for brick_id, pids in ask.items():
            b = where[brick_id]
            client.metrics.inc("dr_tag_polls_total")
            try:
                conn = await client._connect(b.address, b.port)
                reply = await conn.send(DrTags(pids=pids), timeout=5.0)
            except DDSError as e:
                failures.append(e)
                continue
            tags = reply.get("tags") if isinstance(reply, dict) else None
            for p, tag in (tags or {}).items():
                try:
                    maker, safe_ms = tag[0], tag[1]
                    self._tag(PartitionId.parse(p), str(maker), int(safe_ms),
                              client.clock.seconds())
                except (ValueError, TypeError, IndexError):
                    continue
        if failures and len(failures) == len(ask) and self.auto \
                and all(isinstance(e, UNREACHABLE) for e in failures):
            await self.check_failover()

    # -- failover ------------------------------------------------------------------------

    def _after_failure(self, failure: Failure, again: Callable[[], Deferred[Any]]) -> Any:
        if isinstance(failure.value, Indeterminate):
            # Its outcome stays unknown (it is not made again), but the primary may be
            # gone: look, so that the next call goes to the DR site if it was promoted.
            self.check_failover().addErrback(lambda _: None)
            return failure
        if not isinstance(failure.value, UNREACHABLE):
            return failure

        def decided(moved: bool) -> Any:
            return again() if moved else failure
        return self.check_failover().addCallback(decided)

    def check_failover(self) -> Deferred[bool]:
        """Whether calls now go to the promoted DR site (moving them there if the
        primary is unreachable and the site was promoted from us).  One check at a time:
        concurrent callers share it."""
        out: Deferred[bool] = Deferred()
        if self.failed_over is not None:
            out.callback(True)
            return out
        self._waiters.append(out)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._check()).addBoth(self._checked)
        return out

    def _checked(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    async def _check(self) -> bool:
        client = self.client
        try:
            await client.maps.refresh()
            return False                        # the primary answers: no failover
        except DDSError:
            pass
        try:
            site = await self.site_client()
            await site.maps.refresh()
        except DDSError as e:
            self.log.warn("primary unreachable, and so is the DR site: {error}",
                          error=e.message)
            return False
        record = site.map.dr
        if not promoted_from(record, client.cluster):
            self.log.info("primary unreachable; the DR site was not promoted from "
                          "{cluster} ({record})", cluster=client.cluster, record=record)
            return False
        assert record is not None
        self.log.warn("primary {cluster} unreachable and the DR site promoted from it "
                      "(epoch {epoch}): replaying {n} journal entries there, then "
                      "failing over", cluster=client.cluster, epoch=record.epoch,
                      n=len(self.journal))
        report = await replay(site, self.journal, client.timeout)
        self.last_report = report
        self.log.warn("DR replay done: {summary}", summary=report.summary())
        self.failed_over = site
        client.metrics.inc("dr_failovers_total")
        client.stop_refresh()
        return True

    async def site_client(self) -> DDSClient:
        """A client of the DR site (made once, on first need)."""
        if self.site is None:
            raise InvalidRequest("no dr_site configured: the library does not know the "
                                 "DR site")
        if self._site_client is None:
            from dds.lib.client import DDSClient
            c = self.client
            site = DDSClient(c.reactor, timeout=c.timeout, rng=c.rng,
                             metrics_registry=c.metrics.registry, **self.site)
            await site.start()
            self._site_client = site
        return self._site_client

    async def replay(self) -> ReplayReport:
        """``DDSClient.dr_replay``: the journal replayed at the DR site, which must have
        been promoted from this cluster."""
        site = self.failed_over or await self.site_client()
        if self.failed_over is None:
            await site.maps.refresh()
            if not promoted_from(site.map.dr, self.client.cluster):
                raise NotPrimary(f"the DR site was not promoted from "
                                 f"{self.client.cluster!r} (its DR record: "
                                 f"{site.map.dr}); nothing was replayed")
        report = await replay(site, self.journal, self.client.timeout)
        self.last_report = report
        return report

    async def close(self) -> None:
        self._closed = True
        call, self._poll_call = self._poll_call, None
        if call is not None and call.active():
            call.cancel()
        self.journal.close()
        if self._site_client is not None:
            await self._site_client.close()


__all__ = ["DrSide", "FAILOVER_MODES", "POLL_S", "promoted_from", "site_options"]
