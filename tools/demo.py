"""A short demo workload against a running cluster, printing what it does.

``python -m dds.tools.demo --local`` (after ``dds-admin local up``) or
``--seeds host:port,... --secret-file F``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import react

from dds.auth import Credentials, read_secret_file, secret_env
from dds.config import load_cluster_config
from dds.errors import DDSError, Exists, VersionMismatch
from dds.lib import DDSClient
from dds.tools import credfiles


def _say(text: str) -> None:
    print(text, flush=True)


async def demo(reactor: Any, seeds: list[str], cluster: str,
               credentials: Credentials) -> None:
    client = await DDSClient.connect(reactor, seeds, cluster=cluster,
                                     credentials=credentials)
    cmap = client.map
    _say(f"connected: {len(cmap.bricks)} bricks, {len(cmap.rgs)} replica groups, "
         f"{len(cmap.partition_rg)} partitions, map fingerprint {cmap.fp:#010x}")

    for key, value in [(b"user:alice", b"Alice"), (b"user:bob", b"Bob")]:
        pid, rg = cmap.route(key)
        version = await client.put(key, value)
        _say(f"put {key.decode()!r} = {value.decode()!r} -> version {version} "
             f"(partition {pid}, {rg.name} on {', '.join(rg.active_members)})")
    r = await client.get(b"user:alice")
    _say(f"get 'user:alice' -> {r.value!r} at version {r.version}")

    try:
        await client.create(b"user:alice", b"Impostor")
    except Exists as e:
        _say(f"create 'user:alice' again -> refused: {e.message}")

    counter = b"demo:counter"
    base = (await client.get(counter)).version
    try:
        await client.compare_and_put(counter, b"stale", base + 5)
    except VersionMismatch as e:
        _say(f"compare_and_put with a wrong version -> refused: {e.message}")
    for _ in range(3):
        cur = await client.get(counter)
        n = int(cur.value or b"0") + 1
        v = await client.compare_and_put(counter, b"%d" % n, cur.version)
        _say(f"counter incremented to {n} with compare_and_put (version {v})")

    v = await client.remove(b"user:bob")
    r = await client.get(b"user:bob")
    _say(f"remove 'user:bob' -> version {v}; get -> {r.value!r} (version {r.version}: "
         "versions never go back)")

    n = 2000
    start = time.perf_counter()
    for i in range(0, n, 200):
        await DeferredList([client.put(b"demo:%d" % j, b"x" * 100)
                            for j in range(i, i + 200)], fireOnOneErrback=True)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    await DeferredList([client.get(b"demo:%d" % j) for j in range(n)], fireOnOneErrback=True)
    get_s = time.perf_counter() - start
    _say(f"{n} puts of 100 bytes in {put_s:.2f}s ({n / put_s:,.0f}/s, 200 in flight); "
         f"{n} gets in {get_s:.2f}s ({n / get_s:,.0f}/s)")
    _say("done. Try: dds-admin status --local   |   dds-admin bench --local   |   "
         "dds-admin local down")
    await client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dds.tools.demo")
    p.add_argument("--local", action="store_true", help="use the cluster in ./.dds-local")
    p.add_argument("--dir", default=".dds-local", help="local cluster directory")
    p.add_argument("--seeds", help="host:port,host:port of bricks")
    p.add_argument("--cluster", default="dds")
    p.add_argument("--secret-file", help="file holding the client role's secret (or "
                   "DDS_CLIENT_SECRET)")
    args = p.parse_args(argv)
    try:
        if args.seeds:
            seeds = args.seeds.split(",")
            cluster = args.cluster
            secret = (read_secret_file(Path(args.secret_file), "--secret-file")
                      if args.secret_file
                      else os.environ.get(secret_env("client"), "").encode())
            credentials = Credentials.shared("client", secret)
        else:
            root = Path(args.dir)
            cfg = load_cluster_config(root / "cluster.toml")
            seeds = [b.address for b in cfg.bricks]
            cluster = cfg.cluster.name
            credentials = credfiles.client_credentials(root, cluster)
    except (OSError, DDSError) as e:
        print(f"demo: no cluster to talk to ({e}); run `dds-admin local up` first",
              file=sys.stderr)
        return 1

    def run(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(demo(reactor, seeds, cluster, credentials))
    try:
        react(run)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
