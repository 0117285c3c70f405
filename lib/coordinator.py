"""The 2PC coordinator (DESIGN §4): one write, prepared on every active member.

The outcome it reports is never a guess:

* success once every member voted YES on one version (**parallel commit**, the default:
  the commit point is "every participant staged the write durably"; COMMIT then goes out
  one-way, and a member that misses it commits by termination), or, in the **ack** mode
  kept for comparison, only after every member acknowledged COMMIT (write-all);
* a definite failure (``Exists``, ``VersionMismatch``, or a retryable NO such as ``Locked``)
  only after every member that may have voted YES acknowledged ABORT;
* otherwise ``Indeterminate``: the write may or may not have happened.
"""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dds import failpoints
from dds.deferreds import sleep
from dds.errors import (ConnectionLost, DDSError, Exists, Indeterminate, InternalError,
                        InvalidRequest, Locked, NotPrimary, NotServing, ReplayRefused,
                        ReplayWindow, ReplicaDamaged, StaleMap, StorageFull, Timeout,
                        Unavailable, UnknownTransaction, VersionMismatch)
from dds.messages import title
from dds.records import BrickRecord
from dds.rpc import RPCProtocol, State

from dds.lib.routing import Route

Connect = Callable[[str, int], Awaitable[RPCProtocol]]

#: Replies that are a definite NO: the member holds nothing for the transaction.
#: (A member answers ``StorageFull`` or ``ReplicaDamaged`` to a PREPARE only with nothing
#: staged or locked: the vote's record could not be written, or the key not read; the DR
#: refusals come from checks made before anything is held, ``bricks/drmode.py``.)
_NO_VOTES = (Locked, Exists, VersionMismatch, StaleMap, NotServing, InvalidRequest,
             StorageFull, ReplicaDamaged, NotPrimary, ReplayWindow, ReplayRefused)
#: A member that cannot apply a decision for one of these reasons is stepping out of its
#: RG (a full disk, ``bricks/diskspace.py``), or dropped the transaction with a replica it
#: re-copies (``bricks/damage.py``: then it answers the unknown transaction, or a write
#: cut off ``NotServing``): whether it has left is asked again every
#: ``STEPPING_OUT_RECHECK_S`` rather than once.
_STEPPING_OUT = (StorageFull, ReplicaDamaged, UnknownTransaction, NotServing)
STEPPING_OUT_RECHECK_S = 0.25
Cached = Callable[[str, int], "RPCProtocol | None"]
#: Ask the RG to exclude a member (``lib/exclusion.py``): true once it is no longer active.
Exclude = Callable[[Route, BrickRecord, str, float], Deferred[bool]]
#: Whether a member is no longer active in the RG, by a fresh map (``lib/exclusion.py``).
Left = Callable[[Route, BrickRecord], Deferred[bool]]
#: Failures that say a member could not be reached (rather than that it said no).
UNREACHABLE = (Unavailable, Timeout, ConnectionLost)
#: Told of a write that succeeded on a primary a DR site follows (its votes carry
#: ``at``): the route, the PREPARE's body, the new version and the votes
#: (``lib/drsite.py`` keeps it in the client journal).
Tagged = Callable[[Route, dict[str, Any], int, list[Any]], None]


#: Commit modes: success at the last YES vote, or at the last COMMIT acknowledgement.
PARALLEL = "parallel"
ACK = "ack"
COMMIT_MODES = (PARALLEL, ACK)

#: How long one COMMIT or ABORT attempt waits for its acknowledgement before resending.
DECISION_ATTEMPT_S = 1.0
#: Longest wait for a vote: a member waits at most ``lock_wait_ms`` (2 s) for a lock, so
#: a member silent longer is unreachable, and is excluded rather than waited for.
PREPARE_ATTEMPT_S = 2.5


class PrepareFailed(Exception):
    """Not all members voted YES; every YES was undone.  ``errors`` holds each NO."""

    def __init__(self, errors: list[DDSError],
                 bricks: list[BrickRecord] | None = None) -> None:
        super().__init__(", ".join(e.message for e in errors))
        self.errors = errors
        #: The member that gave each error, in the same order (when known).
        self.bricks = bricks or []


class Coordinator:
    log = Logger()

    def __init__(self, clock: IReactorTime, connect: Connect,
                 cached: Cached = lambda host, port: None, lib_id: int | None = None,
                 exclude: Exclude | None = None, left: Left | None = None,
                 commit_mode: str = PARALLEL) -> None:
        if commit_mode not in COMMIT_MODES:
            raise InvalidRequest(f"commit_mode must be one of {', '.join(COMMIT_MODES)}, "
                                 f"not {commit_mode!r:.40}")
        #: Whether success is reported at the last YES vote (DESIGN §4) rather than at
        #: the last COMMIT acknowledgement.
        self.parallel = commit_mode == PARALLEL
        self.clock = clock
        self.exclude = exclude
        self.left = left
        self.connect = connect
        self.cached = cached
        self.lib_id = lib_id if lib_id is not None else int.from_bytes(os.urandom(8), "big")
        self._counter = 0
        #: See ``Tagged``; None (no DR journal) costs nothing.
        self.on_tagged: Tagged | None = None

    def new_txid(self) -> tuple[int, int]:
        self._counter += 1
        return (self.lib_id, self._counter)

    def _call(self, brick: BrickRecord, mtype: str, body: dict[str, Any],
              timeout: float) -> Deferred[Any]:
        conn = self.cached(brick.address, brick.port)
        if conn is not None:      # the common case: no coroutine, straight to the wire
            return conn.call(mtype, body, timeout=max(timeout, 0.001))
        return Deferred.fromCoroutine(self._connect_and_call(brick, mtype, body, timeout))

    async def _connect_and_call(self, brick: BrickRecord, mtype: str, body: dict[str, Any],
                                timeout: float) -> Any:
        """The call's timeout covers the connection too: a paused brick accepts TCP
        connections (its kernel does) but never finishes a handshake."""
        start = self.clock.seconds()
        connecting: Deferred[RPCProtocol] = Deferred.fromCoroutine(
            self._connected(brick))
        connecting.addTimeout(max(timeout, 0.001), self.clock)
        try:
            conn = await connecting
        except defer.TimeoutError:
            raise Timeout(f"connecting to {brick.id} for a {title(mtype)} timed out after "
                          f"{timeout:g}s") from None
        remaining = timeout - (self.clock.seconds() - start)
        return await conn.call(mtype, body, timeout=max(remaining, 0.001))

    async def _connected(self, brick: BrickRecord) -> RPCProtocol:
        return await self.connect(brick.address, brick.port)

    def tell(self, brick: BrickRecord, mtype: str, txid: tuple[int, int]) -> None:
        """Send a decision one-way (parallel commit): no reply, no retry.  A member that
        misses it learns the outcome by termination, which commits a transaction every
        participant holds prepared."""
        body = {"txid": txid}
        conn = self.cached(brick.address, brick.port)
        if conn is not None and conn.notify(mtype, body):
            return

        async def connect_and_tell() -> None:
            try:
                conn = await self.connect(brick.address, brick.port)
            except Exception as e:
                self.log.debug("{mtype} of {txid} not sent to {brick}: {error}",
                               mtype=mtype, txid=txid, brick=brick.id, error=e)
                return
            conn.notify(mtype, body)
        Deferred.fromCoroutine(connect_and_tell())

    def start(self, route: Route, key: bytes, op: str, value: bytes | None,
              expected_version: int | None, ts: tuple[int, int],
              deadline: float) -> Deferred[int]:
        """``write`` as a Deferred.  The common case (every member connected, every vote
        YES on one version, every COMMIT acknowledged at the first attempt) runs on
        reply callbacks alone: no coroutine, no Deferred per request.  Anything else
        continues in ``write``'s general code from where the transaction stands."""
        conns: list[RPCProtocol] = []
        if not failpoints.ARMED:
            for b in route.replicas:
                conn = self.cached(b.address, b.port)
                if not isinstance(conn, RPCProtocol) or conn.state is not State.READY:
                    break
                conns.append(conn)
        if len(conns) != len(route.replicas) or not conns:
            return Deferred.fromCoroutine(self.write(route, key, op, value,
                                                     expected_version, ts, deadline))
        txn = _Write(self, route, key, conns, deadline)
        txn.prepare(self._prepare_body(route, txn.txid, key, op, value, expected_version,
                                       ts, deadline))
        return txn.result

    def _prepare_body(self, route: Route, txid: tuple[int, int], key: bytes, op: str,
                      value: bytes | None, expected_version: int | None,
                      ts: tuple[int, int], deadline: float) -> dict[str, Any]:
        body = route.request(key)
        body.update(txid=txid, ts=ts, op=op, value=value, expected_version=expected_version,
                    timeout_ms=max(1, int((deadline - self.clock.seconds()) * 1000)),
                    participants=route.participants)
        return body

    async def write(self, route: Route, key: bytes, op: str, value: bytes | None,
                    expected_version: int | None, ts: tuple[int, int],
                    deadline: float) -> int:
        """Run one transaction; returns the new version, or raises ``PrepareFailed``
        (nothing happened) or ``Indeterminate``."""
        txid = self.new_txid()
        members = route.replicas
        remaining = deadline - self.clock.seconds()
        body = self._prepare_body(route, txid, key, op, value, expected_version, ts,
                                  deadline)
        votes = await _gather([self._call(b, "prepare", body,
                                          min(remaining, PREPARE_ATTEMPT_S))
                               for b in members])
        return await self._after_prepare(route, txid, members, votes, key, deadline,
                                         body=body)

    async def _after_prepare(self, route: Route, txid: tuple[int, int],
                             members: list[BrickRecord], votes: list[Any], key: bytes,
                             deadline: float, acks: list[Any] | None = None,
                             body: dict[str, Any] | None = None) -> int:
        """Decide on ``votes`` and see the decision through (``acks``: the replies to a
        first round of COMMITs already sent; ``body``: the PREPARE's, for ``on_tagged``)."""
        try:
            version = await self._decide(route, txid, members, votes, key, deadline, acks)
        except (PrepareFailed, Indeterminate):
            raise
        except Exception as e:
            # Members may be prepared and termination may still commit: never report
            # an unexpected failure after PREPARE as if nothing had happened.
            self.log.failure("coordinator failed after PREPARE of {txid}", txid=txid)
            raise Indeterminate(f"transaction {txid}: the coordinator failed after PREPARE "
                                f"({e!r}); the write may or may not happen") from e
        self.tagged(route, body, version, votes)
        return version

    def tagged(self, route: Route, body: dict[str, Any] | None, version: int,
               votes: list[Any]) -> None:
        """A write succeeded: tell ``on_tagged`` if its votes carry ``at``."""
        if self.on_tagged is None or body is None or not votes:
            return
        first = votes[0]
        if type(first) is dict and "at" in first:
            try:
                self.on_tagged(route, body, version, votes)
            except Exception:
                self.log.failure("the DR journal failed to keep a write of {key!r}",
                                 key=body.get("key", b"")[:64])

    async def _decide(self, route: Route, txid: tuple[int, int], members: list[BrickRecord],
                      votes: list[Any], key: bytes, deadline: float,
                      acks: list[Any] | None = None) -> int:
        if failpoints.ARMED and acks is None:
            failpoints.fire("coordinator.after_prepare")
        failures = [r for r in votes if isinstance(r, BaseException)]
        if not failures:
            versions = {r["version"] for r in votes}
            if len(versions) != 1:
                self.log.error("replicas of {key!r} disagree on its version: {versions}; "
                               "aborting", key=key[:64], versions=sorted(versions))
                await self._abort(route, txid, members, deadline)
                raise PrepareFailed([InternalError(
                    f"replicas disagree on the key's version ({sorted(versions)}); "
                    "run dds-admin repair")])
            return await self._commit(route, txid, members, deadline, versions.pop() + 1,
                                      acks)
        # Only a member that may have voted YES needs an ABORT.  One that answered NO holds
        # nothing; one we could not even connect to never saw the PREPARE (and will refuse
        # the transaction if it ever hears of it).  A timeout or a lost connection leaves
        # the vote unknown, so those members are told.
        told = [b for b, r in zip(members, votes)
                if not isinstance(r, (Unavailable,) + _NO_VOTES)]
        await self._abort(route, txid, told, deadline)
        failed = [(b, f if isinstance(f, DDSError) else InternalError(repr(f)))
                  for b, f in zip(members, votes) if isinstance(f, BaseException)]
        raise PrepareFailed([e for _, e in failed], [b for b, _ in failed])

    async def _commit(self, route: Route, txid: tuple[int, int],
                      members: list[BrickRecord], deadline: float, new_version: int,
                      acks: list[Any] | None = None) -> int:
        """The decision is commit.  Parallel mode: every member voted YES, so the write
        is committed; tell the members one-way.  Ack mode: keep asking until every member
        acknowledged (or was excluded, so the write is on every active member of the new
        record)."""
        if self.parallel and acks is None:
            rest = list(members)
            if failpoints.ARMED:
                failpoints.fire("coordinator.after_decision")
                if rest and failpoints.is_armed("coordinator.between_commits"):
                    self.tell(rest.pop(0), "commit", txid)
                    failpoints.fire("coordinator.between_commits")
            for b in rest:
                self.tell(b, "commit", txid)
            return new_version
        await self._until_acknowledged(route, "commit", txid, members, deadline,
                                       "committed but not acknowledged by {bricks}: the "
                                       "write may not be visible everywhere yet", acks)
        return new_version

    async def _abort(self, route: Route, txid: tuple[int, int], members: list[BrickRecord],
                     deadline: float) -> None:
        """Undo every YES.  If some member can be neither told nor excluded, the outcome
        is unknown: termination on that member could still commit (everyone prepared)."""
        await self._until_acknowledged(route, "abort", txid, members, deadline,
                                       "abort not acknowledged by {bricks}")

    async def _until_acknowledged(self, route: Route, mtype: str, txid: tuple[int, int],
                                  members: list[BrickRecord], deadline: float,
                                  unknown: str, first: list[Any] | None = None) -> None:
        """Send the decision to every member, again to those that did not answer, until
        all acknowledged or the deadline passed (then the outcome is ``Indeterminate``).
        A member that cannot be reached is excluded from the RG (DESIGN §4, participant
        failure): once it is, its acknowledgement is no longer needed.  ``first``: the
        replies of every member to a first round already sent (the fast path's)."""
        asked: set[str] = set()
        checked: set[str] = set()
        recheck_at: dict[str, float] = {}
        if first is not None:
            pending = list(members)
        elif failpoints.ARMED:
            failpoints.fire("coordinator.after_decision")
            if (mtype == "commit" and members
                    and failpoints.is_armed("coordinator.between_commits")):
                pending = await self._first_commit_alone(txid, members, deadline)
            else:
                pending = list(members)
        else:
            pending = list(members)
        while pending:
            # Each attempt is bounded on its own, so a reply that never comes is asked for
            # again (repeated COMMITs and ABORTs get the same answer) within the deadline.
            if first is not None:
                results, first = first, None
            else:
                attempt = min(deadline - self.clock.seconds(), DECISION_ATTEMPT_S)
                results = await _gather([self._call(b, mtype, {"txid": txid}, attempt)
                                         for b in pending])
            failed = [(b, r) for b, r in zip(pending, results) if isinstance(r, BaseException)]
            pending = [b for b, _ in failed]
            if not pending:
                return
            lost = [(b, r) for b, r in failed if isinstance(r, UNREACHABLE) and b.id not in asked]
            if lost and self.exclude is not None:
                asked.update(b.id for b, _ in lost)
                outcomes = await _gather([
                    self.exclude(route, b, f"{mtype} of {txid} not acknowledged: {r.message}",
                                 deadline) for b, r in lost])
                gone = {b.id for (b, _), ok in zip(lost, outcomes) if ok is True}
                pending = [b for b in pending if b.id not in gone]
                if not pending:
                    return
            now = self.clock.seconds()
            refused = [b for b, r in failed if not isinstance(r, UNREACHABLE)
                       and b.id not in checked and recheck_at.get(b.id, 0.0) <= now
                       and b.id in {p.id for p in pending}]
            if refused and self.left is not None:
                for b, r in failed:
                    if b in refused and isinstance(r, _STEPPING_OUT):
                        recheck_at[b.id] = now + STEPPING_OUT_RECHECK_S
                    elif b in refused:
                        checked.add(b.id)
                outcomes = await _gather([self.left(route, b) for b in refused])
                gone = {b.id for b, ok in zip(refused, outcomes) if ok is True}
                pending = [b for b in pending if b.id not in gone]
                if not pending:
                    return
            if self.clock.seconds() >= deadline:
                raise Indeterminate(f"transaction {txid}: " +
                                    unknown.format(bricks=[b.id for b in pending]))
            await sleep(self.clock, 0.01)

    async def _first_commit_alone(self, txid: tuple[int, int], members: list[BrickRecord],
                                  deadline: float) -> list[BrickRecord]:
        """Only while ``coordinator.between_commits`` is armed: COMMIT the first member
        and wait for its answer before the others are sent anything, so the failpoint
        fires with exactly one member committed.  Returns the members still to tell."""
        first, rest = members[0], list(members[1:])
        result = await _gather([self._call(first, "commit", {"txid": txid},
                                           deadline - self.clock.seconds())])
        failpoints.fire("coordinator.between_commits")
        return rest + [first] if isinstance(result[0], BaseException) else rest


class _Write:
    """One transaction on the common path of ``Coordinator.start``: PREPARE to every
    member, and on YES votes that agree, COMMIT to every member; the reply callbacks
    count the answers.  Any other turn (a NO, a lost reply, a disagreement) hands the
    transaction, with the replies so far, to the coordinator's general code."""

    __slots__ = ("coordinator", "route", "key", "conns", "deadline", "txid", "replies",
                 "waiting", "votes", "new_version", "result", "body")

    def __init__(self, coordinator: Coordinator, route: Route, key: bytes,
                 conns: list[RPCProtocol], deadline: float) -> None:
        self.coordinator = coordinator
        self.route = route
        self.key = key
        self.conns = conns
        self.deadline = deadline
        self.txid = coordinator.new_txid()
        self.replies: list[Any] = [None] * len(conns)
        self.waiting = len(conns)
        self.votes: list[Any] = []
        self.new_version = 0
        self.result: Deferred[int] = Deferred()
        self.body: dict[str, Any] | None = None

    def prepare(self, body: dict[str, Any]) -> None:
        self.body = body
        timeout = max(min(self.deadline - self.coordinator.clock.seconds(),
                          PREPARE_ATTEMPT_S), 0.001)
        for i, conn in enumerate(self.conns):
            conn.request("prepare", body, timeout, self._voted, i)

    def _voted(self, i: int, reply: Any) -> None:
        self.replies[i] = reply
        self.waiting -= 1
        if self.waiting:
            return
        votes, self.votes = self.replies, self.replies
        first = votes[0]
        version = first.get("version") if type(first) is dict else None
        if type(version) is not int or any(type(r) is not dict or r.get("version") != version
                                           for r in votes):
            self._general(None)
            return
        self.new_version = version + 1
        if self.coordinator.parallel:
            # Committed: every member staged the write.  COMMIT goes out before the
            # caller hears of success, so on each connection it precedes whatever the
            # caller sends next.
            body = {"txid": self.txid}
            for conn, brick in zip(self.conns, self.route.replicas):
                if not conn.notify("commit", body):
                    self.coordinator.tell(brick, "commit", self.txid)
            if "at" in first:               # a DR site follows: journal the write
                self.coordinator.tagged(self.route, self.body, self.new_version, votes)
            self.result.callback(self.new_version)
            return
        self.replies = [None] * len(self.conns)
        self.waiting = len(self.conns)
        clock = self.coordinator.clock
        timeout = max(min(self.deadline - clock.seconds(), DECISION_ATTEMPT_S), 0.001)
        body = {"txid": self.txid}
        for j, conn in enumerate(self.conns):
            conn.request("commit", body, timeout, self._acked, j)

    def _acked(self, i: int, reply: Any) -> None:
        self.replies[i] = reply
        self.waiting -= 1
        if self.waiting:
            return
        if any(isinstance(r, BaseException) for r in self.replies):
            self._general(self.replies)
        else:
            if "at" in self.votes[0]:
                self.coordinator.tagged(self.route, self.body, self.new_version, self.votes)
            self.result.callback(self.new_version)

    def _general(self, acks: list[Any] | None) -> None:
        c = self.coordinator
        Deferred.fromCoroutine(c._after_prepare(
            self.route, self.txid, self.route.replicas, self.votes, self.key, self.deadline,
            acks, self.body)).chainDeferred(self.result)


def _gather(calls: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """Results in order, an exception in place of each failed call (every failure is
    consumed).  A counter rather than ``DeferredList``: this runs twice per write."""
    results: list[Any] = [None] * len(calls)
    remaining = [len(calls)]
    out: Deferred[list[Any]] = Deferred()

    def one(result: Any, i: int) -> None:
        results[i] = result.value if isinstance(result, Failure) else result
        remaining[0] -= 1
        if remaining[0] == 0:
            out.callback(results)
    for i, d in enumerate(calls):
        d.addBoth(one, i)
    if not calls:
        out.callback(results)
    return out

