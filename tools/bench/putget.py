"""``dds-admin bench``: throughput, latency and CPU cost of gets and puts on a running
cluster, next to the floor that Python + Twisted + msgpack reach on the same machine.

Phases, each with a progress bar on stderr:

1. floor: an echo server and client process (:mod:`dds.tools.bench.floor`), ``concurrency``
   round trips in flight, for ``seconds``;
2. load: ``clients`` worker processes (:mod:`dds.tools.bench.worker`) put every key once;
3. put in the acknowledged commit mode, then with parallel commit (the default), then
   both again with one put in flight, then get, then bounded-staleness gets: uniform random keys for ``seconds``
   each, ``concurrency`` operations in flight split over the workers.

CPU per operation is the user + system time (``/proc/PID/stat``) that the bricks and the
workers used during the phase, divided by the operations done in it.  Brick PIDs come
from the local cluster's ``pids.json``, from the status reply when a brick reports its
``pid``, or from the owner of the brick's listening socket when the brick is local.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape

from dds.tools import procs
from dds.tools.bench.cpu import cpu_delta, cpu_seconds
from dds.tools.bench.harness import READY_TIMEOUT_S, load_workers, run_phase
from dds.tools.bench.measure import percentile
from dds.tools.bench.report import met, table
from dds.tools.children import Child, Events, next_event
from dds.tools.cluster import Target
from dds.tools.runner import AdminError

__all__ = ["BenchParams", "TARGETS", "bench", "brick_pids", "commit_mode_ratios", "render"]

#: The issue's targets, as fractions of the floor's round trips per second.
TARGETS = {"get": 0.35, "put": 0.08}


@attrs.frozen
class BenchParams:
    seconds: float = 5.0
    keys: int = 10000
    value_size: int = 100
    concurrency: int = 64
    #: One client process holding all the requests in flight, as the floor's client
    #: does: the same shape of load on both sides of the ratio.  (Two processes also
    #: split the requests to each brick into smaller frames: more system calls and
    #: reactor turns per request, 19 µs of CPU per get against 14.5 µs with one.)
    clients: int = 1


def brick_pids(target: Target, report: dict[str, Any]) -> dict[str, int]:
    """Brick id -> PID for the bricks whose CPU time this machine can read."""
    found: dict[str, int] = {}
    if target.local_dir is not None:
        from dds.tools.local import Layout, running
        found = {b.id: b.pid for b in running(Layout(target.local_dir.absolute()))}
    for b in report["bricks"]:
        if b["id"] in found or not b["up"]:
            continue
        if b.get("pid") and procs.is_running(int(b["pid"])):
            found[b["id"]] = int(b["pid"])
            continue
        owners = procs.pids_listening(int(b["address"].rsplit(":", 1)[1]))
        if len(owners) == 1:
            found[b["id"]] = owners[0]
    return found


def _floor(params: BenchParams) -> dict[str, Any]:
    events: Events = queue.Queue()
    server = Child("floor server", "dds.tools.bench.floor", ["serve"], events)
    client: Child | None = None
    try:
        _who, ready = next_event(events, time.monotonic() + READY_TIMEOUT_S,
                                 "the floor server to start")
        client = Child("floor client", "dds.tools.bench.floor",
                       ["client", "--port", str(ready["port"]), "--seconds",
                        str(params.seconds), "--concurrency", str(params.concurrency),
                        "--value-size", str(params.value_size)], events)
        next_event(events, time.monotonic() + READY_TIMEOUT_S, "the floor client to connect")
        pids = [server.pid, client.pid]
        before = cpu_seconds(pids)
        [result] = run_phase([client], events, {"go": True}, "floor (echo)",
                             params.seconds, True, params.seconds + READY_TIMEOUT_S)
        cpu = cpu_delta(before, cpu_seconds(pids))
        rtt = float(result["rtt_s"])
        return {"floor_rtt_s": rtt, "floor_ops": result["ops"],
                "floor_cpu_us_per_rtt": cpu * 1e6 / max(1, result["ops"]),
                "floor_mean_latency_ms": params.concurrency / rtt * 1000 if rtt else 0.0}
    finally:
        for c in (client, server):
            if c is not None:
                c.stop()


#: The timed phases, in order: (worker phase, suffix of its result fields, extra command
#: fields, share of ``--seconds``).  The two commit modes are compared in A-B-B-A order,
#: each half as long: a cluster's speed drifts during a run (its files grow, the machine is
#: shared), and a plain A-then-B order hands that drift to whichever mode runs second
#: (measured: the second put phase was 10-25 % slower whichever mode it was).  Fields
#: without a suffix describe parallel commit, the library's default.
_PHASES: tuple[tuple[str, str, dict[str, Any], float], ...] = (
    ("put", "_ack_mode", {"mode": "ack"}, 0.5),
    ("put", "", {}, 0.5),
    ("put", "", {}, 0.5),
    ("put", "_ack_mode", {"mode": "ack"}, 0.5),
    ("put", "_c1_ack_mode", {"mode": "ack", "concurrency": 1}, 0.5),
    ("put", "_c1", {"concurrency": 1}, 0.5),
    ("put", "_c1", {"concurrency": 1}, 0.5),
    ("put", "_c1_ack_mode", {"mode": "ack", "concurrency": 1}, 0.5),
    ("get", "", {}, 1.0),
    ("bget", "", {}, 1.0),
)


@attrs.define
class _Tally:
    """One result's measurements, summed over the phases that feed it."""
    ops: int = 0
    cpu_bricks: float = 0.0
    cpu_clients: float = 0.0
    lat: list[int] = attrs.Factory(list)
    errors: dict[str, int] = attrs.Factory(dict)
    first_error: str = ""
    #: per worker index: (operations, seconds), for the rate
    by_worker: dict[int, tuple[int, float]] = attrs.Factory(dict)

    def add(self, results: list[dict[str, Any]], cpu_bricks: float,
            cpu_clients: float) -> None:
        self.cpu_bricks += cpu_bricks
        self.cpu_clients += cpu_clients
        for i, r in enumerate(results):
            self.ops += r["ops"]
            self.lat.extend(r["lat_us"])
            ops, secs = self.by_worker.get(i, (0, 0.0))
            self.by_worker[i] = (ops + r["ops"], secs + r["elapsed"])
            for code, n in r["errors"].items():
                self.errors[code] = self.errors.get(code, 0) + n
            self.first_error = self.first_error or r["first_error"]

    def fields(self, phase: str, suffix: str) -> dict[str, Any]:
        lat = sorted(self.lat)
        cpu = self.cpu_bricks + self.cpu_clients
        return {
            f"{phase}_ops{suffix}": self.ops,
            f"{phase}_ops_s{suffix}": sum(ops / secs for ops, secs in self.by_worker.values()
                                          if secs > 0),
            f"{phase}_p50_ms{suffix}": percentile(lat, 0.50) / 1000.0,
            f"{phase}_p99_ms{suffix}": percentile(lat, 0.99) / 1000.0,
            f"cpu_us_per_{phase}{suffix}": cpu * 1e6 / max(1, self.ops),
            f"cpu_us_per_{phase}_bricks{suffix}": self.cpu_bricks * 1e6 / max(1, self.ops),
            f"cpu_us_per_{phase}_clients{suffix}": self.cpu_clients * 1e6 / max(1, self.ops),
            f"{phase}_errors{suffix}": self.errors,
            f"{phase}_first_error{suffix}": self.first_error,
        }


def _load_phases(target: Target, params: BenchParams, brick_pid_list: list[int]
                 ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with load_workers(target, concurrency=params.concurrency, clients=params.clients,
                      keys=params.keys, value_size=params.value_size) as (workers, events):
        load = run_phase(workers, events, {"phase": "load"}, "load (untimed)",
                         params.keys, False, 600.0)
        out["load_errors"] = sum(sum(r["errors"].values()) for r in load)
        worker_pids = [w.pid for w in workers]
        tallies: dict[tuple[str, str], _Tally] = {}
        for phase, suffix, extra, portion in _PHASES:
            seconds = params.seconds * portion
            before = cpu_seconds(brick_pid_list), cpu_seconds(worker_pids)
            command = {"phase": phase, "seconds": seconds, **extra}
            if "concurrency" in extra:      # one in flight in all: one worker's share
                command["concurrency"] = 1
            label = phase + suffix.replace("_", " ")
            results = run_phase(workers if "concurrency" not in extra else workers[:1],
                                events, command, label, seconds, True,
                                seconds + READY_TIMEOUT_S)
            tallies.setdefault((phase, suffix), _Tally()).add(
                results, cpu_delta(before[0], cpu_seconds(brick_pid_list)),
                cpu_delta(before[1], cpu_seconds(worker_pids)))
        for (phase, suffix), tally in tallies.items():
            out.update(tally.fields(phase, suffix))
    return out


def bench(target: Target, params: BenchParams, report: dict[str, Any]) -> dict[str, Any]:
    """Run every phase against the cluster described by ``report`` (a status report)."""
    down = [b["id"] for b in report["bricks"] if not b["up"]]
    if down:
        raise AdminError(f"bricks down: {', '.join(down)}; bench needs a healthy cluster")
    pids = brick_pids(target, report)
    result: dict[str, Any] = {
        "seconds": params.seconds, "keys": params.keys, "value_size": params.value_size,
        "concurrency": params.concurrency, "clients": max(1, min(params.clients,
                                                                 params.concurrency)),
        "bricks": len(report["bricks"]), "replication": report["replication"],
        "partitions": report["partitions"],
        "durability": sorted({b.get("durability") or "?" for b in report["bricks"]}),
        "cpu_bricks_measured": len(pids), "cpu_includes_all_bricks":
            len(pids) == len(report["bricks"]),
    }
    result.update(_floor(params))
    result.update(_load_phases(target, params, list(pids.values())))
    floor = result["floor_rtt_s"] or 1.0
    for op in ("get", "put"):
        result[f"{op}_ratio"] = result[f"{op}_ops_s"] / floor
        result[f"{op}_target"] = TARGETS[op]
        result[f"{op}_target_met"] = result[f"{op}_ratio"] >= TARGETS[op]
    result.update(commit_mode_ratios(result))
    result["bounded_get_ops_s"] = result["bget_ops_s"]
    return result


def commit_mode_ratios(r: dict[str, Any]) -> dict[str, float]:
    """Parallel commit against the acknowledged mode, measured in the same run: put p50
    at full concurrency and at one in flight, and CPU per put (lower is better)."""
    def ratio(a: str, b: str) -> float:
        return r[a] / r[b] if r.get(b) else 0.0
    return {"put_p50_parallel_to_ack": ratio("put_p50_ms", "put_p50_ms_ack_mode"),
            "put_p50_c1_parallel_to_ack": ratio("put_p50_ms_c1", "put_p50_ms_c1_ack_mode"),
            "cpu_per_put_parallel_to_ack": ratio("cpu_us_per_put",
                                                 "cpu_us_per_put_ack_mode")}


def render(r: dict[str, Any], console: Console) -> None:
    console.print(f"bench: {r['bricks']} bricks, replication {r['replication']}, "
                  f"durability {'/'.join(r['durability'])}, {r['keys']} keys of "
                  f"{r['value_size']} bytes, {r['concurrency']} in flight over "
                  f"{r['clients']} client process(es), {r['seconds']:g}s per phase")
    t = table("", "DDS", "floor (echo)", "ratio", "target", "met")
    floor = f"{r['floor_rtt_s']:,.0f} rtt/s"
    for op in ("get", "put"):
        t.add_row(f"{op} ops/s", f"{r[f'{op}_ops_s']:,.0f}", floor,
                  f"{r[f'{op}_ratio']:.3f}", f">= {r[f'{op}_target']:.2f}",
                  met(r[f"{op}_target_met"]))
    for op in ("get", "put"):
        t.add_row(f"{op} p50 / p99 ms", f"{r[f'{op}_p50_ms']:.2f} / {r[f'{op}_p99_ms']:.2f}",
                  f"{r['floor_mean_latency_ms']:.2f} mean", "", "", "")
    for op in ("get", "put"):
        t.add_row(f"CPU us per {op}", f"{r[f'cpu_us_per_{op}']:,.0f} (bricks "
                  f"{r[f'cpu_us_per_{op}_bricks']:,.0f}, clients "
                  f"{r[f'cpu_us_per_{op}_clients']:,.0f})",
                  f"{r['floor_cpu_us_per_rtt']:,.1f} per rtt", "", "", "")
    console.print(t)
    if "bounded_get_ops_s" in r:
        console.print(f"bounded-staleness gets (0.5 s): {r['bounded_get_ops_s']:,.0f} ops/s, "
                      f"p50 / p99 {r['bget_p50_ms']:.2f} / {r['bget_p99_ms']:.2f} ms")
    if "put_p50_ms_ack_mode" in r:
        m = table("", "parallel", "ack", "ratio",
                  title="put: parallel commit against the acknowledged mode (same run)")
        m.add_row(f"p50 ms, {r['concurrency']} in flight", f"{r['put_p50_ms']:.2f}",
                  f"{r['put_p50_ms_ack_mode']:.2f}", f"{r['put_p50_parallel_to_ack']:.2f}")
        m.add_row("p50 ms, 1 in flight", f"{r['put_p50_ms_c1']:.2f}",
                  f"{r['put_p50_ms_c1_ack_mode']:.2f}",
                  f"{r['put_p50_c1_parallel_to_ack']:.2f}")
        m.add_row("ops/s", f"{r['put_ops_s']:,.0f}", f"{r['put_ops_s_ack_mode']:,.0f}",
                  f"{r['put_ops_s'] / max(r['put_ops_s_ack_mode'], 1e-9):.2f}")
        m.add_row("CPU us per put", f"{r['cpu_us_per_put']:,.0f}",
                  f"{r['cpu_us_per_put_ack_mode']:,.0f}",
                  f"{r['cpu_per_put_parallel_to_ack']:.2f}")
        console.print(m)
    if not r["cpu_includes_all_bricks"]:
        console.print(f"[yellow]CPU figures include only {r['cpu_bricks_measured']} of "
                      f"{r['bricks']} bricks (the others are not visible from here)[/yellow]")
    for op in ("load", "get", "put", "bget"):
        errors = r.get(f"{op}_errors")
        if errors:
            first = r.get(f"{op}_first_error", "")
            console.print(f"[red]{op} errors: {escape(str(errors))}" +
                          (f" (first: {escape(first)})" if first else "") + "[/red]")
