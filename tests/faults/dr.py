"""The DR fault run (issue 17's proof): a primary cluster and a DR cluster on loopback,
the follower running, client processes writing; at a random moment every primary brick,
the follower and 0–3 clients are killed with SIGKILL; ``dds-admin dr promote`` opens the
DR site; the surviving clients fail over by themselves, replay their journals, and write
anew after the window.  Then ``drcheck.py`` checks what the DR site holds.

``python -m tests.faults.dr [--seed N] [--runs K] [--clients 8] [--window S]
[--short] [--dir D] [--keep]``

Each run prints ``seed=N acked=… acked_dr=… replayed=… refused=… lost_killed=…
violations=0 loss_window_ms=… cutoff_before_kill_ms=…`` (``acked``: writes the primary
acknowledged, ``acked_dr``: the DR site after failover; ``replayed``/``refused``: the
surviving clients' replays applied / refused; ``lost_killed``: acknowledged writes of
killed clients the DR site lacks, each acknowledged after its partition's cut-off: the
measured loss; ``loss_window_ms``: what ``dr promote`` reported, promotion time − oldest
cut-off; ``cutoff_before_kill_ms``: the kill time − oldest cut-off).  The exit status is non-zero
if any run has a violation (listed above its line) or fails.  ``make dr-verify`` runs 20
seeds; ``tests/integration/test_dr_failover.py`` one, ``--short``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import crochet
from twisted.internet.defer import Deferred

from dds.drmsgs import DrTags
from dds.maps import ClusterMap
from dds.partition import PartitionId

from tests.faults.dr_client import new_key, old_key
from tests.faults.drcheck import Findings, acks_of, check
from tests.faults.drsites import site_url
from tests.harness.admin import clean_env
from tests.harness.aio import eventually
from tests.harness.cluster import Cluster
from tests.harness.processes import wait_until


@attrs.frozen
class Plan:
    seed: int
    clients: int = 8
    keys: int = 64
    write_s: tuple[float, float] = (4.0, 10.0)
    window_s: float = 10.0
    after_s: float = 5.0


def _reactor() -> Any:
    from twisted.internet import reactor
    return reactor


@crochet.run_in_reactor
def _in_reactor(coro_fn: Any, *args: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coro_fn(*args))


def on_reactor(coro_fn: Any, *args: Any, timeout: float = 120.0) -> Any:
    return _in_reactor(coro_fn, *args).wait(timeout)


async def _init(cluster: Cluster) -> None:
    await cluster.init(_reactor())


async def _tagged(primary: Cluster) -> None:
    """Until the primary holds a DR tag for every partition: the follower runs."""
    cmap = ClusterMap.of(primary.records())
    wanted = {str(p) for p in cmap.partition_rg}

    async def all_tagged() -> bool:
        seen: set[str] = set()
        for b in primary.bricks:
            conn = await primary.admin_connection(_reactor(), b)
            try:
                seen.update((await conn.send(DrTags(), timeout=5))["tags"])
            finally:
                conn.close()
        return wanted <= seen
    await eventually(all_tagged, 60.0, "the follower's tags on every primary partition")


async def _final(site: Cluster, keys: list[bytes]) -> dict[bytes, tuple[bytes | None, int]]:
    client = await site.client(_reactor(), metrics_registry=None, timeout=10.0)
    try:
        out = {}
        for k in keys:
            r = await client.get(k)
            out[k] = (r.value, r.version)
        return out
    finally:
        await client.close()


def _admin(cluster: Cluster, log: Path, *args: str, wait: bool = True
           ) -> subprocess.Popen[bytes] | subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dds.tools.admin", *args, "--seeds",
           ",".join(cluster.seeds), "--secret-file", str(cluster.root / "secrets" / "admin")]
    if not wait:
        return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                env=clean_env(), start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=300)


def _secret(cluster: Cluster) -> str:
    s = cluster.credentials("client").secret("client")
    assert s is not None
    return s.hex()


def run_one(plan: Plan, root: Path, echo: Any = print) -> tuple[Findings, dict[str, Any]]:
    """One seed: the run and its findings (and promote's report)."""
    rng = random.Random(plan.seed)
    primary = Cluster(root / "primary", bricks=4, replication=3, partitions=8)
    site = Cluster(root / "site", bricks=3, replication=3, partitions=4)
    clients: list[subprocess.Popen[bytes]] = []
    follower: Any = None
    try:
        primary.start()
        site.start()
        on_reactor(_init, primary)
        on_reactor(_init, site)
        follower = _admin(primary, root / "follower.log", "dr", "attach", "--site",
                          site_url(site), "--site-secret-file",
                          str(site.root / "secrets" / "admin"), "--state",
                          str(root / "follower.state"), wait=False)
        on_reactor(_tagged, primary)
        for i in range(plan.clients):
            cfg = {"process": i, "seeds": primary.seeds, "secret": _secret(primary),
                   "site_seeds": site.seeds, "site_secret": _secret(site),
                   "keys": plan.keys, "out": str(root / f"client{i}.jsonl"),
                   "journal": str(root / f"journal{i}"), "seed": rng.getrandbits(32)}
            path = root / f"client{i}.json"
            path.write_text(json.dumps(cfg))
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "tests.faults.dr_client", str(path)],
                stdout=open(root / f"client{i}.log", "ab"), stderr=subprocess.STDOUT,
                env=clean_env(), start_new_session=True))
        wait_until(lambda: all((root / f"client{i}.jsonl").exists() and '"started"' in
                               (root / f"client{i}.jsonl").read_text()
                               for i in range(plan.clients)), 120.0, "the clients to start")
        time.sleep(rng.uniform(*plan.write_s))
        killed = set(rng.sample(range(plan.clients), rng.randint(0, 3)))
        for i in sorted(killed):
            clients[i].send_signal(signal.SIGKILL)
        follower.send_signal(signal.SIGKILL)
        for b in primary.bricks:
            b.send_signal(signal.SIGKILL)
        kill_ms = int(time.time() * 1000)
        for b in primary.bricks:
            b.stop()                                # reaps it
        echo(f"seed={plan.seed}: killed the primary, the follower and clients "
             f"{sorted(killed)}")
        promoted = _admin(site, root / "promote.log", "dr", "promote", "--yes", "--window",
                          str(plan.window_s), "--json")
        assert isinstance(promoted, subprocess.CompletedProcess)
        (root / "promote.out").write_text(promoted.stdout + promoted.stderr)
        if promoted.returncode != 0:
            raise RuntimeError(f"dr promote failed: {promoted.stderr[-2000:]}")
        report: dict[str, Any] = json.loads(promoted.stdout)
        report["kill_ms"] = kill_ms
        until = report["replay_until_ms"] / 1000
        time.sleep(max(0.0, until - time.time()) + plan.after_s)
        for i, c in enumerate(clients):
            if i not in killed:
                c.send_signal(signal.SIGTERM)
        for i, c in enumerate(clients):
            if i not in killed and c.wait(120) != 0:
                raise RuntimeError(f"client {i} exited with {c.returncode}: "
                                   f"{(root / f'client{i}.log').read_text()[-2000:]}")
        keys = [old_key(i) for i in range(plan.keys)] + [new_key(i) for i in range(plan.keys)]
        final = on_reactor(_final, site, keys)
        acks, reports = [], []
        for i in range(plan.clients):
            lines = [json.loads(x) for x in
                     (root / f"client{i}.jsonl").read_text().splitlines() if x.strip()]
            acks.extend(acks_of(i, lines))
            if i not in killed:
                last = [r for r in lines if r.get("t") == "report"]
                if not last or not last[-1]["failed_over"]:
                    raise RuntimeError(f"surviving client {i} did not fail over")
                reports.append(last[-1]["replay"] or {})
        cmap = ClusterMap.of(primary.records())
        cutoffs = {p: c["safe_ms"] for p, c in report["cutoffs"].items()}
        findings = check(acks, killed, final, cutoffs,
                         lambda k: str(cmap.route(k)[0]), reports)
        return findings, report
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        for cluster in (primary, site):
            try:
                cluster.stop()
            except Exception as e:          # report, keep stopping
                echo(f"stopping {cluster.root.name}: {e}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.faults.dr", description=__doc__)
    p.add_argument("--seed", type=int, default=None, help="the first seed (default: random)")
    p.add_argument("--runs", type=int, default=1, help="seeds to run (seed, seed+1, ...)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--window", type=float, default=10.0, help="the replay window, s")
    p.add_argument("--short", action="store_true",
                   help="shorter writing and waiting (the integration test's run)")
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep each run's directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    crochet.setup()
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    base = args.dir or Path(tempfile.mkdtemp(prefix="dds-dr-"))
    failed = 0
    for seed in range(first, first + args.runs):
        plan = Plan(seed, clients=args.clients, window_s=args.window,
                    **({"write_s": (2.0, 4.0), "after_s": 2.0} if args.short else {}))
        root = base / f"seed-{seed}"
        root.mkdir(parents=True, exist_ok=True)
        print(f"seed={seed}: running in {root}", flush=True)
        try:
            findings, report = run_one(plan, root, lambda s: print(s, flush=True))
        except Exception as e:
            print(f"seed={seed} FAILED: {type(e).__name__}: {e}", flush=True)
            failed += 1
            continue
        for v in findings.violations[:50]:
            print(f"  violation: {v}", flush=True)
        oldest = report["oldest_cutoff_ms"]
        print(f"seed={seed} {findings.summary()} "
              f"loss_window_ms={report['loss_window_ms']} cutoff_before_kill_ms="
              f"{None if oldest is None else report['kill_ms'] - oldest}", flush=True)
        if findings.violations:
            failed += 1
        elif not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
