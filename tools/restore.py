"""``dds-admin restore DIR --config FILE`` (issue 17, DESIGN §12): a backup into a new
cluster, whose bricks run but have not been initialized (no map).  Its size and
placement may differ from the backed-up cluster's: only the partitions carry over.

1. Everything is verified before anything is changed: the manifest (format version,
   its own checksum), then every partition file (size, xxh64, every row's checksum,
   the recorded replica checksum).  The first problem names the file.
2. Every brick of the configuration must answer with an empty map (a cluster that holds
   a map is refused: a restore never overwrites data).
3. ``dds-admin init``'s plan with the backup's partitions (``init_cluster(...,
   partitions=...)``): the same placement, an irregular trie allowed.
4. Each file is uploaded to every member of its RG (``restore_begin``, chunks,
   ``restore_finish``); the brick verifies it again and installs it only in place of an
   empty replica.
5. Every replica's ``checksum`` is compared with the backup's.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import xxhash
from rich.console import Console
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred

from dds.backupmsgs import RestoreAbort, RestoreBegin, RestoreChunk, RestoreFinish
from dds.config import ClusterConfig, parse_address
from dds.errors import DDSError, NotServing
from dds.maps import ClusterMap
from dds.messages import Checksum, MapGet

from dds.tools.backup import View, all_results, in_thread
from dds.tools.backupfmt import BackupError, Entry, Manifest, load_manifest, verify_file
from dds.tools.cluster import BrickCaller, Target, describe_error, gather
from dds.tools.errors import AdminError
from dds.tools.runner import poll_until

__all__ = ["restore", "render", "verify_backup"]

CHUNK = 1 << 20
IN_FLIGHT = 8
PARALLEL = 2
#: Verifying and installing a large file at the brick takes seconds.
FINISH_TIMEOUT_S = 600.0


async def verify_backup(reactor: Any, src: Path, view: View) -> Manifest:
    """The manifest, every file verified against it (in a worker thread)."""
    manifest = load_manifest(src)
    total = manifest.bytes
    done = 0
    view.step(f"verifying {len(manifest.entries)} partition files ({total:,} bytes)")
    for entry in manifest.entries:
        await in_thread(reactor, verify_file, src, entry)
        done += entry.size
        view.progress(done, total)
    view.end()
    return manifest


async def _check_empty(reactor: Any, caller: BrickCaller, bricks: list[str]) -> None:
    replies = await gather(caller.send(b, MapGet()) for b in bricks)
    problems = []
    for b, reply in zip(bricks, replies):
        if isinstance(reply, BaseException):
            problems.append(f"brick {b}: {describe_error(reply)}")
            continue
        held = ClusterMap.from_wire(reply["map"])
        if len(held):
            name = held.cluster.name if held.cluster is not None else "?"
            problems.append(f"brick {b} already holds a map (cluster {name!r}, "
                            f"{len(held.partition_rg)} partitions)")
    if problems:
        raise AdminError(*problems, "nothing was changed: a restore goes into new bricks "
                         "that have not been initialized (a restore never overwrites data)")


class _Upload:
    def __init__(self, reactor: Any, caller: BrickCaller, src: Path, view: View,
                 timeout: float, total: int) -> None:
        self.reactor = reactor
        self.caller = caller
        self.src = src
        self.view = view
        self.timeout = timeout
        self.total = total
        self.done = 0

    async def partition(self, entry: Entry, members: list[str]) -> dict[str, Any]:
        """Upload one file to every member at once (each chunk read once)."""
        t0 = time.monotonic()
        sessions: dict[str, int] = {}
        try:
            for b in members:
                sessions[b] = int((await self._begin(b, entry))["session"])
            await self._send(entry, sessions)
            finished = await gather(self.caller.send(b, RestoreFinish(sid),
                                                     timeout=FINISH_TIMEOUT_S)
                                    for b, sid in sessions.items())
        except BaseException:
            for b, sid in sessions.items():
                try:
                    await self.caller.send(b, RestoreAbort(sid))
                except (DDSError, AdminError):
                    pass
            raise
        problems = []
        for b, reply in zip(sessions, finished):
            if isinstance(reply, BaseException):
                problems.append(f"  {b}: {describe_error(reply)}")
            elif int(reply["checksum"]) != entry.checksum:
                problems.append(f"  {b}: installed checksum {int(reply['checksum']):016x}, "
                                f"the backup's {entry.checksum:016x}")
        if problems:
            raise AdminError(f"installing {entry.pid} failed:", *problems)
        seconds = time.monotonic() - t0
        self.view.step(f"{entry.pid}: {entry.size:,} bytes on {', '.join(members)} in "
                       f"{seconds:.1f}s")
        return {"pid": entry.pid, "bricks": members, "seconds": round(seconds, 3)}

    async def _begin(self, brick: str, entry: Entry) -> dict[str, Any]:
        """``restore_begin``; a brick that has not created its replica yet (just
        initialized) is asked again for a while."""
        msg = RestoreBegin(entry.pid, entry.size, entry.xxh64)
        last: list[BaseException] = []

        async def ready() -> bool:
            try:
                last[:] = [await self.caller.send(brick, msg)]  # type: ignore[list-item]
                return True
            except NotServing as e:
                last[:] = [e]
                return False
        if not await poll_until(self.reactor, ready, timeout=max(self.timeout, 10.0),
                                interval=0.1):
            raise AdminError(f"brick {brick} does not take {entry.pid}: "
                             f"{describe_error(last[0]) if last else 'no answer'}")
        reply: dict[str, Any] = last[0]  # type: ignore[assignment]
        return reply

    async def _send(self, entry: Entry, sessions: dict[str, int]) -> None:
        path = self.src / entry.file
        pending: deque[Deferred[Any]] = deque()
        with open(path, "rb") as f:
            offset = 0
            try:
                while offset < entry.size:
                    data = f.read(CHUNK)
                    if not data:
                        raise BackupError(f"{path} changed while being restored")
                    checksum = xxhash.xxh64_intdigest(data)
                    for b, sid in sessions.items():
                        pending.append(ensureDeferred(self.caller.send(
                            b, RestoreChunk(sid, offset, data, checksum),
                            timeout=self.timeout)))
                    offset += len(data)
                    while len(pending) > IN_FLIGHT * len(sessions):
                        await pending.popleft()
                    self.done += len(data)
                    self.view.progress(self.done, self.total)
                while pending:
                    await pending.popleft()
            finally:
                for d in pending:
                    d.addErrback(lambda _f: None)


async def _compare(caller: BrickCaller, cmap: ClusterMap, manifest: Manifest
                   ) -> list[str]:
    """Every replica's ``checksum`` against the backup's: the problems."""
    wanted = {e.pid: e for e in manifest.entries}
    asks = [(str(pid), b) for pid, rec in sorted(cmap.partition_rg.items())
            for b in rec.active_members]
    replies = await gather(caller.send(b, Checksum(pid)) for pid, b in asks)
    problems = []
    for (pid, b), reply in zip(asks, replies):
        if isinstance(reply, BaseException):
            problems.append(f"{pid} on {b}: {describe_error(reply)}")
        elif int(reply["checksum"]) != wanted[pid].checksum:
            problems.append(f"{pid} on {b}: checksum {int(reply['checksum']):016x}, the "
                            f"backup's {wanted[pid].checksum:016x}")
    return problems


async def restore(reactor: Any, cfg: ClusterConfig, target: Target, src: Path,
                  view: View, timeout: float = 30.0) -> dict[str, Any]:
    """Restore the backup in ``src`` into the new cluster of ``cfg``; the report."""
    from dds.tools.initcmd import init_cluster

    t0 = time.monotonic()
    manifest = await verify_backup(reactor, src, view)
    verified_s = time.monotonic() - t0
    addresses = {b.id: parse_address(b.address) for b in cfg.bricks}
    caller = BrickCaller(reactor, target, addresses, timeout=timeout, name_unreachable=True)
    try:
        await _check_empty(reactor, caller, list(addresses))
        view.step(f"initializing {len(addresses)} bricks with the backup's "
                  f"{len(manifest.entries)} partitions")
        result = await init_cluster(reactor, cfg, target, timeout=timeout, say=view.step,
                                    partitions=manifest.pids)
        cmap = result.map
        upload = _Upload(reactor, caller, src, view, timeout, manifest.bytes)
        gate = DeferredSemaphore(PARALLEL)
        rgs = cmap.partition_rg
        entries = sorted(manifest.entries, key=lambda e: e.pid)
        installed = await all_results(gate.run(upload.partition, e,
                                               list(rgs[_pid(e)].active_members))
                                      for e in entries)
        view.end()
        problems = await _compare(caller, cmap, manifest)
        if problems:
            raise AdminError("restored replicas differ from the backup:", *problems)
    finally:
        caller.close()
        view.end()
    seconds = time.monotonic() - t0
    return {"ok": True, "dir": str(src), "from_cluster": manifest.cluster,
            "cluster": cmap.cluster.name if cmap.cluster else cfg.cluster.name,
            "partitions": len(installed), "bricks": len(addresses),
            "bytes": manifest.bytes, "seconds": round(seconds, 3),
            "verify_s": round(verified_s, 3),
            "mb_s": round(manifest.bytes / 1e6 / seconds, 2) if seconds > 0 else None,
            "warnings": list(result.warnings), "installed": installed}


def _pid(entry: Entry) -> Any:
    from dds.partition import PartitionId
    return PartitionId.parse(entry.pid)


def render(report: dict[str, Any], console: Console) -> None:
    console.print(f"restored [bold]{report['from_cluster']}[/bold]'s backup from "
                  f"{report['dir']} into cluster [bold]{report['cluster']}[/bold] "
                  f"({report['bricks']} bricks): {report['partitions']} partitions, "
                  f"{report['bytes']:,} bytes in {report['seconds']:.1f}s "
                  f"({report['mb_s']} MB/s); every replica's checksum matches the backup")
