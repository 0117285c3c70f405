"""Tests of the history recorder and the linearizability / lost-write checkers."""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from tests.verify.history import HistoryRecorder, Op, OpKind, Status, load_histories
from tests.verify.linearizability import (
    _FAIL_EXISTS,
    _FAIL_MISMATCH,
    _OK,
    _OPTIONAL,
    CheckResult,
    State,
    _mode,
    check_linearizable,
    check_lost_writes,
)

K = b"k"


def op(kind: OpKind, inv: float, comp: float | None, status: Status = "ok", *,
       value: bytes | None = None, rv: bytes | None = None, ver: int | None = None,
       exp: int | None = None, error: str | None = None, p: int = 0, key: bytes = K) -> Op:
    return Op(p, kind, key, value, exp, inv, comp, status, rv, ver, error)


def put(inv: float, comp: float | None, value: bytes, ver: int | None = None,
        status: Status = "ok", **kw: object) -> Op:
    return op("put", inv, comp, status, value=value, ver=ver, **kw)  # type: ignore[arg-type]


def get(inv: float, comp: float, rv: bytes | None, ver: int, **kw: object) -> Op:
    return op("get", inv, comp, rv=rv, ver=ver, **kw)  # type: ignore[arg-type]


def kinds(result: CheckResult) -> list[str]:
    return [v.kind for v in result.violations]


# -- hand-made histories -----------------------------------------------------------------

def test_sequential_valid_history_passes() -> None:
    h = [put(0, 1, b"a", 1), get(2, 3, b"a", 1), put(4, 5, b"b", 2),
         op("remove", 6, 7, ver=3), get(8, 9, None, 3),
         op("create", 10, 11, value=b"c", ver=4), get(12, 13, b"c", 4),
         op("cas", 14, 15, value=b"d", exp=4, ver=5), get(16, 17, b"d", 5)]
    r = check_linearizable(h)
    assert r.ok, r.violations
    assert (r.keys_checked, r.ops_checked) == (1, len(h))


@pytest.mark.parametrize("first,second", [(b"a", b"b"), (b"b", b"a")])
def test_concurrent_overlapping_writes_pass_in_either_order(first: bytes,
                                                           second: bytes) -> None:
    h = [put(0, 10, first, 1, p=1), put(1, 9, second, 2, p=2), get(11, 12, second, 2)]
    assert check_linearizable(h).ok


def test_read_concurrent_with_write_may_see_either_state() -> None:
    h = [put(0, 1, b"a", 1), put(2, 10, b"b", 2, p=1),
         get(3, 4, b"a", 1, p=2), get(5, 6, b"b", 2, p=3)]
    assert check_linearizable(h).ok


def test_stale_read_after_overwrite_completed_is_flagged() -> None:
    stale = get(4, 5, b"a", 1)
    r = check_linearizable([put(0, 1, b"a", 1), put(2, 3, b"b", 2), stale])
    assert kinds(r) == ["not_linearizable"]
    assert r.violations[0].key == K
    assert stale in r.violations[0].ops
    assert "k" in r.violations[0].message


def test_lost_write_is_flagged_by_both_checkers() -> None:
    lost = put(2, 3, b"b", 2)
    h = [put(0, 1, b"a", 1), lost, get(4, 5, b"a", 1)]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]
    r = check_lost_writes(h, {K: (b"a", 1)})
    assert kinds(r) == ["lost"]
    assert r.violations[0].ops == (lost,)


def test_lost_write_checker_passes_overwritten_and_final_writes() -> None:
    h = [put(0, 1, b"a", 1), put(2, 3, b"b", 2), op("remove", 4, 5, ver=3)]
    r = check_lost_writes(h, {K: (None, 3)})
    assert r.ok and r.ops_checked == 3


def test_lost_write_at_final_version_with_other_value_is_flagged() -> None:
    r = check_lost_writes([put(0, 1, b"a", 1)], {K: (b"x", 1)})
    assert kinds(r) == ["lost"]


def test_lost_write_checker_reports_missing_final_read() -> None:
    assert kinds(check_lost_writes([put(0, 1, b"a", 1)], {})) == ["no_final_read"]


def test_read_of_value_never_written_is_flagged() -> None:
    h = [put(0, 1, b"a", 1), get(2, 3, b"zzz", 1)]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_indeterminate_put_that_later_shows_up_passes() -> None:
    h = [put(0, 1, b"a", 1), put(2, None, b"b", status="indeterminate"),
         get(5, 6, b"b", 2)]
    assert check_linearizable(h).ok


def test_indeterminate_put_that_never_shows_up_passes() -> None:
    h = [put(0, 1, b"a", 1), put(2, 3, b"b", status="indeterminate"),
         get(5, 6, b"a", 1), get(7, 8, b"a", 1), put(9, 10, b"c", 2)]
    assert check_linearizable(h).ok
    assert check_lost_writes(h, {K: (b"c", 2)}).ok


def test_indeterminate_put_explains_version_gap() -> None:
    h = [put(0, 1, b"a", 1), put(2, None, b"b", status="indeterminate", p=1),
         put(3, 4, b"c", 3)]
    assert check_linearizable(h).ok


def test_read_going_back_from_indeterminate_value_is_flagged() -> None:
    h = [put(0, 1, b"a", 1), put(2, None, b"b", status="indeterminate", p=1),
         get(3, 4, b"b", 2), get(5, 6, b"a", 1)]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_version_going_back_is_flagged() -> None:
    h = [put(0, 1, b"a", 1), put(2, 3, b"b", 2), put(4, 5, b"c", 1)]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_read_with_version_going_back_is_flagged() -> None:
    h = [put(0, 1, b"a", 1), put(2, 3, b"b", 2), get(4, 5, b"b", 1)]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_create_succeeding_twice_on_live_key_is_flagged() -> None:
    h = [op("create", 0, 1, value=b"a", ver=1), op("create", 2, 3, value=b"b", ver=2)]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_create_after_remove_succeeds() -> None:
    h = [op("create", 0, 1, value=b"a", ver=1), op("remove", 2, 3, ver=2),
         op("create", 4, 5, value=b"b", ver=3), get(6, 7, b"b", 3)]
    assert check_linearizable(h).ok


def test_cas_with_version_of_concurrent_put_passes() -> None:
    h = [put(0, 1, b"a", 1), put(2, 6, b"b", 2, p=1),
         op("cas", 3, 7, value=b"c", exp=2, ver=3, p=2), get(8, 9, b"c", 3)]
    assert check_linearizable(h).ok


def test_cas_linearized_before_concurrent_put_passes() -> None:
    h = [put(0, 1, b"a", 1), put(2, 6, b"b", 3, p=1),
         op("cas", 3, 7, value=b"c", exp=1, ver=2, p=2), get(8, 9, b"b", 3)]
    assert check_linearizable(h).ok


def test_cas_mismatch_concurrent_with_put_passes() -> None:
    h = [put(0, 1, b"a", 1), put(2, 6, b"b", 2, p=1),
         op("cas", 3, 7, "fail", value=b"c", exp=1, error="version_mismatch", p=2)]
    assert check_linearizable(h).ok


def test_cas_mismatch_with_matching_version_is_flagged() -> None:
    h = [put(0, 1, b"a", 1),
         op("cas", 2, 3, "fail", value=b"c", exp=1, error="VersionMismatch('v1')")]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_fail_exists_on_live_key_passes() -> None:
    h = [put(0, 1, b"a", 1), op("create", 2, 3, "fail", value=b"b", error="exists")]
    assert check_linearizable(h).ok


def test_fail_exists_concurrent_with_first_write_passes() -> None:
    h = [put(0, 5, b"a", 1, p=1), op("create", 1, 3, "fail", value=b"b", error="Exists")]
    assert check_linearizable(h).ok


def test_fail_exists_on_absent_key_is_flagged() -> None:
    h = [op("create", 0, 1, "fail", value=b"b", error="exists")]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_fail_exists_on_tombstone_is_flagged() -> None:
    h = [put(0, 1, b"a", 1), op("remove", 2, 3, ver=2),
         op("create", 4, 5, "fail", value=b"b", error="exists")]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_fail_with_other_error_has_no_effect_and_is_dropped() -> None:
    h = [put(0, 1, b"a", 1), put(2, 3, b"b", status="fail", error="timeout"),
         op("get", 4, 5, "fail", error="unavailable"), get(6, 7, b"a", 1)]
    r = check_linearizable(h)
    assert r.ok and r.ops_checked == 2


def test_indeterminate_create_and_cas_that_show_up_pass() -> None:
    h = [op("create", 0, None, "indeterminate", value=b"a"),
         op("cas", 1, None, "indeterminate", value=b"b", exp=1, p=1),
         get(2, 3, b"a", 1, p=2), get(4, 5, b"b", 2, p=2)]
    assert check_linearizable(h).ok


def test_indeterminate_create_cannot_apply_to_live_key() -> None:
    h = [put(0, 1, b"a", 1), op("create", 2, None, "indeterminate", value=b"b", p=1),
         get(3, 4, b"b", 2)]
    assert kinds(check_linearizable(h)) == ["not_linearizable"]


def test_many_unobserved_indeterminate_writes_stay_cheap() -> None:
    h = [put(2 * i, 2 * i + 1, b"r%d" % i, i + 1) for i in range(100)]
    h += [put(0.5 + i, None, b"x%d" % i, status="indeterminate", p=1 + i)
          for i in range(100)]
    h += [get(300, 301, b"r99", 100)]
    assert check_linearizable(h, max_states=10_000).ok
    h[-1] = get(300, 301, b"r99", 101)  # a version gap no indeterminate write can fill
    assert kinds(check_linearizable(h, max_states=10_000)) == ["not_linearizable"]


def test_initial_state_is_respected() -> None:
    h = [get(0, 1, b"x", 5), put(2, 3, b"y", 6)]
    assert check_linearizable(h, initial={K: (b"x", 5)}).ok
    assert not check_linearizable(h).ok


def test_keys_are_checked_independently() -> None:
    h = [put(0, 1, b"a", 1, key=b"k1"), put(0, 1, b"b", 1, key=b"k2"),
         get(2, 3, b"b", 1, key=b"k2"), get(2, 3, b"zz", 1, key=b"k1")]
    r = check_linearizable(h)
    assert [v.key for v in r.violations] == [b"k1"] and r.keys_checked == 2


def test_tiny_max_states_reports_undecided() -> None:
    h = [put(0, 1, b"a", 1), put(2, 3, b"b", 2), get(4, 5, b"b", 2)]
    r = check_linearizable(h, max_states=1)
    assert not r.ok and kinds(r) == ["undecided"]


def test_violation_explains_shortest_failing_prefix_and_stuck_op() -> None:
    h = [put(0, 1, b"a", 1), put(2, 3, b"b", 2), get(4, 5, b"b", 2),
         get(6, 7, b"a", 1), get(8, 9, b"b", 2)]
    (v,) = check_linearizable(h).violations
    assert "up to the completion of p0 get(b'k') -> ok (b'a', v1)" in v.message
    assert "(4 ops)" in v.message and "ending in state (b'b', v2)" in v.message
    assert v.ops == tuple(h[:4])


def brute_force_linearizable(ops: list[Op]) -> bool:
    """Reference: try every order (memoized), straight from the model's definition."""
    modes = {o: _mode(o) for o in ops}
    ops = [o for o in ops if modes[o] is not None]
    req = frozenset(i for i, o in enumerate(ops) if modes[o] != _OPTIONAL)

    def step(o: Op, value: bytes | None, ver: int) -> State | None:
        md = modes[o]
        if o.kind == "get":
            return (value, ver) if (o.result_value, o.result_version) == (value, ver) else None
        if md == _FAIL_EXISTS or md == _FAIL_MISMATCH:
            holds = value is not None if md == _FAIL_EXISTS else ver != o.expected_version
            return (value, ver) if holds else None
        if (o.kind == "create" and value is not None) or \
                (o.kind == "cas" and ver != o.expected_version) or \
                (md == _OK and o.result_version != ver + 1):
            return None
        return (None if o.kind == "remove" else o.value, ver + 1)

    @functools.cache
    def go(done: frozenset[int], value: bytes | None, ver: int) -> bool:
        if req <= done:
            return True
        for x, o in enumerate(ops):
            if x in done or any(y not in done and (ops[y].complete_t or 0) < o.invoke_t
                                for y in req):
                continue
            nxt = step(o, value, ver)
            if nxt is not None and go(done | {x}, *nxt):
                return True
        return False
    return go(frozenset(), None, 0)


def random_small_history(rng: random.Random) -> list[Op]:
    """Arbitrary (mostly invalid) small histories over few, repeated values."""
    out = []
    for p in range(rng.randint(1, 3)):
        t = rng.random()
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["put", "get", "remove", "create", "cas"])
            status = rng.choice(["ok", "ok", "ok", "fail", "indeterminate"])
            dur = rng.random() * 2
            out.append(Op(p, kind, K,  # type: ignore[arg-type]
                          rng.choice([b"a", b"b"]) if kind in ("put", "create", "cas") else None,
                          rng.randint(0, 3) if kind == "cas" else None, t,
                          None if status == "indeterminate" and rng.random() < 0.3 else t + dur,
                          status,  # type: ignore[arg-type]
                          rng.choice([b"a", b"b", None]) if kind == "get" else None,
                          rng.randint(0, 3) if status == "ok" else None,
                          rng.choice(["exists", "version_mismatch", "timeout"])
                          if status == "fail" else None))
            t += dur + rng.random() * 0.5
    return out


def test_checker_agrees_with_brute_force_on_small_histories() -> None:
    rng = random.Random(1234)
    verdicts = []
    for n in range(1500):
        if n % 2:
            h = random_small_history(rng)
        else:
            h = evaluate(gen_plans(rng, rng.randint(1, 3), rng.randint(1, 3), [K],
                                   p_indet=0.3, p_timeout=0.1))[0]
            if rng.random() < 0.5:  # nudge one op: often, but not always, a violation
                i = rng.randrange(len(h))
                h[i] = attrs.evolve(h[i], result_version=(h[i].result_version or 0) + 1)
        expected = brute_force_linearizable(h)
        assert check_linearizable(h).ok == expected, h
        verdicts.append(expected)
    assert 0.3 < sum(verdicts) / len(verdicts) < 0.7


# -- history recorder ----------------------------------------------------------------------

def fake_clock() -> itertools.count[float]:
    return itertools.count(1.0)


def test_recorder_keeps_ops_in_memory_and_marks_uncompleted_indeterminate() -> None:
    clock = fake_clock()
    rec = HistoryRecorder(3, clock=lambda: next(clock))
    h1 = rec.invoke("put", b"k", b"v")
    h2 = rec.invoke("get", b"k")
    rec.complete(h1, "ok", result_version=1)
    ops = rec.ops()
    assert ops[0] == Op(3, "put", b"k", b"v", None, 1.0, 3.0, "ok", None, 1, None)
    assert ops[1].status == "indeterminate" and ops[1].complete_t is None
    with pytest.raises(ValueError):
        rec.complete(h1, "ok")
    rec.complete(h2, "ok", result_value=b"v", result_version=1)


def test_recorder_files_round_trip_and_merge(tmp_path: Path) -> None:
    paths = [tmp_path / "c1.jsonl", tmp_path / "c2.jsonl"]
    with HistoryRecorder(1, paths[0]) as r1, HistoryRecorder(2, paths[1]) as r2:
        a = r1.invoke("cas", b"\x00k", b"\xffv", expected_version=4)
        b = r2.invoke("create", b"k2", b"w")
        r1.complete(a, "fail", error="version_mismatch")
        r2.invoke("remove", b"k2")  # never completes: the client was "killed"
        r2.complete(b, "ok", result_version=1)
        expected = sorted(r1.ops() + r2.ops(), key=lambda o: o.invoke_t)
    assert load_histories(paths) == expected
    assert json.loads(paths[0].read_text().splitlines()[0])["key"] == "006b"


def test_load_histories_ignores_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rec = HistoryRecorder(1, path)
    rec.invoke("put", b"k", b"v")
    rec.close()
    with open(path, "a") as f:
        f.write('{"ev": "compl')
    (only,) = load_histories([path])
    assert only.status == "indeterminate" and only.complete_t is None


def test_restarted_client_appending_to_same_file_does_not_collide(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    for value in (b"first", b"second"):
        with HistoryRecorder(1, path) as rec:
            rec.complete(rec.invoke("put", b"k", value), "ok", result_version=1)
    assert [o.value for o in load_histories([path])] == [b"first", b"second"]


# -- generated histories and planted bugs --------------------------------------------------

@attrs.define
class Plan:
    process: int
    kind: OpKind
    key: bytes
    value: bytes | None
    invoke: float
    complete: float | None
    outcome: str  # normal, timeout, indeterminate
    lin: float | None  # linearization point; None = no effect
    coin: float
    delta: int


def gen_plans(rng: random.Random, procs: int, ops_per_proc: int, keys: list[bytes],
              p_indet: float = 0.06, p_timeout: float = 0.04,
              p_killed: float = 0.2) -> list[Plan]:
    """Per-process sequential operations with random overlaps across processes."""
    plans: list[Plan] = []
    uid = itertools.count()
    all_kinds: list[OpKind] = ["put", "get", "remove", "create", "cas"]
    for p in range(procs):
        t = rng.random()
        for _ in range(ops_per_proc):
            kind = rng.choices(all_kinds, weights=[4, 5, 1, 2, 2])[0]
            value = None if kind in ("get", "remove") else f"v{p}.{next(uid)}".encode()
            dur = rng.expovariate(1.0) + 0.01
            r = rng.random()
            if r < p_indet:
                outcome = "indeterminate"
                lin = t + rng.random() * dur * 4 if rng.random() < 0.5 else None
            elif r < p_indet + p_timeout:
                outcome, lin = "timeout", None
            else:
                outcome, lin = "normal", rng.uniform(t, t + dur)
            killed = outcome == "indeterminate" and rng.random() < p_killed
            plans.append(Plan(p, kind, rng.choice(keys), value, t,
                              None if killed else t + dur, outcome, lin, rng.random(),
                              rng.choice([-2, -1, 1, 2])))
            if killed:
                break
            t += dur + rng.expovariate(3.0)
    end = max(max(pl.lin or 0.0, pl.complete or pl.invoke) for pl in plans) + 1
    for i, key in enumerate(keys):  # quiescent final reads
        plans.append(Plan(procs, "get", key, None, end + 2 * i, end + 2 * i + 1, "normal",
                          end + 2 * i + 0.5, 0.0, 0))
    return plans


def evaluate(plans: list[Plan], drop: int | None = None) -> tuple[list[Op], list[int]]:
    """Run the plans through a correct register, except that the write ``drop`` is acked
    without taking effect.  Returns the ops and the indices of effective writes in order."""
    state: dict[bytes, State] = defaultdict(lambda: (None, 0))
    res: dict[int, tuple[Status, bytes | None, int | None, str | None, int | None]] = {}
    effective: list[int] = []
    order = sorted((i for i, pl in enumerate(plans) if pl.lin is not None),
                   key=lambda i: plans[i].lin or 0.0)
    for i in order:
        pl = plans[i]
        value, ver = state[pl.key]
        exp = ver if pl.coin < 0.6 else max(0, ver + pl.delta)
        ok = not ((pl.kind == "create" and value is not None)
                  or (pl.kind == "cas" and ver != exp))
        status: Status = "ok" if pl.outcome == "normal" else "indeterminate"
        if pl.kind == "get":
            res[i] = (status, value, ver, None, None)
        elif not ok:
            err = "exists" if pl.kind == "create" else "version_mismatch"
            res[i] = ("fail", None, None, err, exp) if status == "ok" else \
                ("indeterminate", None, None, None, exp)
        else:
            if i != drop:
                state[pl.key] = (pl.value, ver + 1)
                effective.append(i)
            res[i] = (status, None, ver + 1 if status == "ok" else None, None, exp)
    ops = []
    for i, pl in enumerate(plans):
        if i not in res:  # never took effect
            res[i] = ("fail", None, None, "timeout", pl.delta + 3) if pl.outcome == "timeout" \
                else ("indeterminate", None, None, None, pl.delta + 3)
        st, rvalue, rver, error, expected = res[i]
        ops.append(Op(pl.process, pl.kind, pl.key, pl.value,
                      expected if pl.kind == "cas" else None, pl.invoke,
                      pl.complete if pl.complete is not None or st != "indeterminate"
                      else None, st, rvalue, rver, error))
    return ops, effective


def final_reads(ops: list[Op], procs: int) -> dict[bytes, State]:
    return {o.key: (o.result_value, o.result_version or 0) for o in ops
            if o.process == procs}


def mutate_stale_read(rng: random.Random, ops: list[Op]) -> list[Op] | None:
    cands = []
    for gi, g in enumerate(ops):
        if g.kind != "get" or g.status != "ok":
            continue
        same = [o for o in ops if o.key == g.key and o.status == "ok"
                and o.result_version is not None]
        maxv = max((o.result_version or 0 for o in same
                    if o.complete_t is not None and o.complete_t < g.invoke_t), default=0)
        cands += [(gi, w) for w in same if w.is_write and (w.result_version or 0) < maxv]
    if not cands:
        return None
    gi, w = rng.choice(cands)
    out = list(ops)
    out[gi] = attrs.evolve(ops[gi], result_value=None if w.kind == "remove" else w.value,
                           result_version=w.result_version)
    return out


def mutate_duplicate_version(rng: random.Random, ops: list[Op]) -> list[Op] | None:
    writes: dict[bytes, list[int]] = defaultdict(list)
    for i, o in enumerate(ops):
        if o.is_write and o.status == "ok":
            writes[o.key].append(i)
    keys = sorted(k for k, ws in writes.items() if len(ws) >= 2)
    if not keys:
        return None
    a, b = rng.sample(writes[rng.choice(keys)], 2)
    out = list(ops)
    out[b] = attrs.evolve(ops[b], result_version=ops[a].result_version)
    return out


def mutate_wrong_value(rng: random.Random, ops: list[Op]) -> list[Op] | None:
    gets = [i for i, o in enumerate(ops) if o.kind == "get" and o.status == "ok"]
    i = rng.choice(gets)
    out = list(ops)
    out[i] = attrs.evolve(ops[i], result_value=b"never-written")
    return out


SEEDS = range(150)


def scenario(seed: int) -> tuple[random.Random, list[Plan], int]:
    rng = random.Random(seed)
    procs = rng.randint(2, 8)
    keys = [b"k%d" % i for i in range(rng.randint(1, 4))]
    return rng, gen_plans(rng, procs, rng.randint(5, 40), keys), procs


def test_generated_valid_histories_pass_both_checkers() -> None:
    for seed in SEEDS:
        _, plans, procs = scenario(seed)
        ops, _ = evaluate(plans)
        r = check_linearizable(ops)
        assert r.ok, (seed, r.violations)
        assert check_lost_writes(ops, final_reads(ops, procs)).ok, seed


@pytest.mark.parametrize("mutation", [mutate_stale_read, mutate_duplicate_version,
                                      mutate_wrong_value])
def test_every_planted_result_bug_is_flagged(
        mutation: Callable[[random.Random, list[Op]], list[Op] | None]) -> None:
    applied = 0
    for seed in SEEDS:
        rng, plans, _ = scenario(seed)
        mutated = mutation(rng, evaluate(plans)[0])
        if mutated is None:
            continue
        applied += 1
        r = check_linearizable(mutated)
        assert not r.ok and kinds(r) == ["not_linearizable"], seed
    assert applied >= len(SEEDS) // 2


def test_every_planted_lost_write_is_flagged_by_both_checkers() -> None:
    applied = 0
    for seed in SEEDS:
        rng, plans, procs = scenario(seed)
        ops, effective = evaluate(plans)
        last: dict[bytes, int] = {plans[i].key: i for i in effective}
        cands = sorted(i for i in last.values() if ops[i].status == "ok")
        if not cands:
            continue
        applied += 1
        mutated, _ = evaluate(plans, drop=rng.choice(cands))
        assert kinds(check_linearizable(mutated)) == ["not_linearizable"], seed
        assert "lost" in kinds(check_lost_writes(mutated, final_reads(mutated, procs))), seed
    assert applied >= len(SEEDS) // 2


def test_high_concurrency_on_one_key_checks_within_state_budget() -> None:
    rng = random.Random(7)
    plans = gen_plans(rng, 10, 40, [b"hot"], p_indet=0.1, p_killed=0.0)
    r = check_linearizable(evaluate(plans)[0], max_states=200_000)
    assert r.ok, r.violations


def test_twenty_thousand_ops_over_two_hundred_keys_check_without_undecided() -> None:
    rng = random.Random(20_000)
    plans = gen_plans(rng, 50, 400, [b"key%d" % i for i in range(200)], p_killed=0.0)
    ops, _ = evaluate(plans)
    r = check_linearizable(ops)
    assert r.ok, r.violations[:3]
    assert len(ops) > 20_000 and r.keys_checked == 200 and r.ops_checked > 15_000
