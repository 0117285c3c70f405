"""``dds-admin backup DIR`` (issue 17, DESIGN §12): every active partition of the map,
each at one recorded log position, plus the map, into ``DIR`` (format:
``dds.tools.backupfmt``).  Online: writes go on meanwhile.

For each partition one active member of its RG (spread over the members) snapshots its
replica (``backup_begin``: one consistent state, its lsn read from the file); the tool
reads it in chunks with a few requests in flight (``backup_chunk``, each chunk's xxh64
checked), checks the whole file's xxh64 and every row's checksum, and writes
``DIR/partitions/<pid>.sqlite``; the brick deletes its snapshot (``backup_end``, or by
itself when the tool is gone).  A member that fails is replaced by the next.  The
manifest is written last, atomically: an interrupted backup has none.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import xxhash
from rich.console import Console
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.threads import deferToThreadPool

from dds.backupmsgs import BackupBegin, BackupChunk, BackupEnd
from dds.errors import DDSError
from dds.partition import DPTrie
from dds.records import RGRecord

from dds.tools.backupfmt import (PARTITIONS, BackupError, Entry, Manifest, check_empty_dir,
                                 scan_file, write_manifest)
from dds.tools.cluster import BrickCaller, Target, describe_error, fetch_map
from dds.tools.errors import AdminError

__all__ = ["View", "all_results", "backup", "in_thread", "render", "CHUNK", "IN_FLIGHT",
           "PARALLEL"]

#: Bytes per chunk request (1 MiB fits any valid ``limits.max_frame_bytes``, which must
#: hold a largest value), requests in flight per partition, partitions at once.
CHUNK = 1 << 20
IN_FLIGHT = 8
PARALLEL = 2
#: A snapshot of a large partition takes seconds; its reply may take this long.
SNAPSHOT_TIMEOUT_S = 600.0


class View(Protocol):
    """Where progress goes (``tools/reorg.py``'s views fit)."""

    def step(self, text: str) -> None: ...

    def progress(self, done: int, total: int) -> None: ...

    def end(self) -> None: ...


def in_thread(reactor: Any, f: Any, *args: Any) -> Deferred[Any]:
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


class _Run:
    def __init__(self, reactor: Any, caller: BrickCaller, dest: Path, view: View,
                 timeout: float) -> None:
        self.reactor = reactor
        self.caller = caller
        self.dest = dest
        self.view = view
        self.timeout = timeout
        self.done = 0
        self.total = 0
        self.known = 0          # snapshots whose size is known (in ``total``)
        self.partitions = 0     # partitions to back up

    def _moved(self, n: int) -> None:
        """Progress against the sizes known so far, the others estimated at their mean
        (a snapshot's size is known only once it is taken)."""
        self.done += n
        guess = self.total
        if 0 < self.known < self.partitions:
            guess += self.total * (self.partitions - self.known) // self.known
        self.view.progress(self.done, guess)

    async def partition(self, i: int, pid: str, rec: RGRecord) -> Entry:
        members = list(rec.active_members)
        if not members:
            raise BackupError(f"{pid}: {rec.name} has no active member to take it from")
        order = members[i % len(members):] + members[:i % len(members)]
        problems = []
        for brick in order:
            try:
                return await self._from(brick, pid)
            except (DDSError, AdminError, OSError) as e:
                problems.append(f"  {brick}: {describe_error(e)}")
                self.view.step(f"{pid}: {brick} failed ({describe_error(e)}); trying "
                               "another member")
        raise BackupError(f"no member of {rec.name} could give a backup of {pid}:",
                          *problems)

    async def _from(self, brick: str, pid: str) -> Entry:
        t0 = time.monotonic()
        begun = await self.caller.send(brick, BackupBegin(pid), timeout=SNAPSHOT_TIMEOUT_S)
        sid, size = int(begun["session"]), int(begun["size"])
        self.total += size
        self.known += 1
        part = self.dest / PARTITIONS / f"{pid}.sqlite.part"
        final = self.dest / PARTITIONS / f"{pid}.sqlite"
        got = 0
        try:
            got = await self._download(brick, sid, size, int(begun["checksum"]), part)
            try:
                rows, checksum = await in_thread(self.reactor, scan_file, part, pid)
            except (ValueError, DDSError) as e:
                raise BackupError(f"{pid} from {brick}: {e}") from None
            part.rename(final)
        except BaseException:
            part.unlink(missing_ok=True)
            self.total -= size
            self.known -= 1
            self._moved(-got)
            raise
        finally:
            try:
                await self.caller.send(brick, BackupEnd(sid))
            except (DDSError, AdminError):
                pass            # the brick drops it when idle
        seconds = time.monotonic() - t0
        self.view.step(f"{pid}: {size:,} bytes, {rows:,} rows at lsn {begun['lsn']} "
                       f"from {brick} in {seconds:.1f}s")
        return Entry(pid=pid, file=f"{PARTITIONS}/{pid}.sqlite", size=size,
                     xxh64=int(begun["checksum"]), lsn=int(begun["lsn"]), rows=rows,
                     checksum=checksum, brick=brick, seconds=seconds)

    async def _download(self, brick: str, sid: int, size: int, xxh: int,
                        path: Path) -> int:
        """Chunks in order with ``IN_FLIGHT`` requests outstanding; each verified."""
        h = xxhash.xxh64()
        pending: deque[tuple[int, Deferred[dict[str, Any]]]] = deque()
        offset = 0
        got = 0

        def ask() -> None:
            nonlocal offset
            want = min(CHUNK, size - offset)
            pending.append((offset, ensureDeferred(self.caller.send(
                brick, BackupChunk(sid, offset, want), timeout=self.timeout))))
            offset += want

        with open(path, "wb") as f:
            try:
                while offset < size and len(pending) < IN_FLIGHT:
                    ask()
                while pending:
                    at, d = pending.popleft()
                    reply = await d
                    data = reply["data"]
                    if not isinstance(data, bytes) or xxhash.xxh64_intdigest(
                            data) != reply["checksum"]:
                        raise BackupError(f"chunk at {at} of session {sid} from {brick} "
                                          "fails its checksum")
                    if not data:
                        raise BackupError(f"{brick} sent nothing at offset {at} of "
                                          f"{size} bytes")
                    if at + len(data) > size:
                        raise BackupError(f"{brick} sent more than the snapshot's size")
                    f.write(data)
                    h.update(data)
                    got += len(data)
                    self._moved(len(data))
                    if offset < size:
                        ask()
            finally:
                for _, d in pending:
                    d.addErrback(lambda _f: None)
        if got != size or h.intdigest() != xxh:
            raise BackupError(f"the snapshot from {brick} arrived damaged ({got} of {size} "
                              "bytes, or its whole-file xxh64 differs)")
        return got


async def backup(reactor: Any, target: Target, dest: Path, view: View,
                 timeout: float = 30.0, parallel: int = PARALLEL) -> dict[str, Any]:
    """Back the cluster up into ``dest`` (new or empty); the report."""
    check_empty_dir(dest)
    cmap, seed = await fetch_map(reactor, target, timeout)
    problem = cmap.layout_problem()
    if problem is not None:
        raise AdminError(f"the map from {seed} is not consistent ({problem}): repair first")
    if cmap.cluster is None:
        raise AdminError(f"the map from {seed} has no cluster record")
    try:
        DPTrie(list(cmap.partition_rg))
    except ValueError as e:
        raise AdminError(f"the map from {seed} has no active partition for part of the "
                         f"keys ({e}): a move is cutting over; try again") from None
    started = time.time()
    t0 = time.monotonic()
    (dest / PARTITIONS).mkdir(parents=True, exist_ok=True)
    addresses = {b.id: (b.address, b.port) for b in cmap.bricks.values()}
    caller = BrickCaller(reactor, target, addresses, timeout=timeout, name_unreachable=True)
    run = _Run(reactor, caller, dest, view, timeout)
    parts = sorted(cmap.partition_rg.items())
    run.partitions = len(parts)
    view.step(f"backing up {len(parts)} partitions of cluster {cmap.cluster.name} into "
              f"{dest}")
    gate = DeferredSemaphore(max(1, parallel))
    try:
        results = await all_results(gate.run(run.partition, i, str(p), r)
                                    for i, (p, r) in enumerate(parts))
    finally:
        caller.close()
        view.end()
    manifest = Manifest(cluster=cmap.cluster.name, map=cmap, entries=tuple(results),
                        started=started, finished=time.time())
    path = write_manifest(dest, manifest)
    seconds = time.monotonic() - t0
    return {"ok": True, "dir": str(dest), "manifest": str(path),
            "cluster": cmap.cluster.name, "partitions": len(results),
            "bytes": manifest.bytes, "seconds": round(seconds, 3),
            "mb_s": round(manifest.bytes / 1e6 / seconds, 2) if seconds > 0 else None,
            "entries": [e.to_json() for e in results]}


async def all_results(ds: Any) -> list[Any]:
    """Every Deferred's result in order; the first failure raised once all are done (a
    partition failing must not leave others writing into the directory)."""
    deferreds = list(ds)
    results: list[Any] = []
    failure: BaseException | None = None
    for d in deferreds:
        try:
            results.append(await d)
        except BaseException as e:     # noqa: BLE001 - re-raised below
            failure = failure or e
    if failure is not None:
        raise failure
    return results


def render(report: dict[str, Any], console: Console) -> None:
    console.print(f"backup of cluster [bold]{report['cluster']}[/bold] in {report['dir']}: "
                  f"{report['partitions']} partitions, {report['bytes']:,} bytes in "
                  f"{report['seconds']:.1f}s ({report['mb_s']} MB/s)")
