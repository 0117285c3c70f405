"""Per-key linearizability and lost-write checkers for DDS histories.

The model of one key is a register holding ``(value, version)``: ``value`` is bytes or
``None`` (absent or tombstone), ``version`` an int (0 = never written) that every
successful write raises by exactly one and that never goes back (DESIGN §4).

:func:`check_linearizable` runs, per key, the Wing–Gong search with just-in-time
linearization and Lowe's memoization of ``(linearized-set, state)`` pairs, iteratively
(an explicit stack and a dancing-links event list, as in Porcupine).  How each completion
is treated:

* ``ok`` operations must be linearized between invocation and completion, and their results
  must match the model exactly (writes: the new version; ``get``: value and version).  A
  ``result_version`` of ``None`` means "not reported" and is not checked.
* ``fail`` of ``create`` with ``exists`` / of ``cas`` with ``version_mismatch`` (the error
  code or class name) is an observation too: at its linearization point the value was not
  ``None`` / the version was not the expected one.  Other failures had no effect and
  observed nothing: they are dropped, and so are ``get`` operations that did not succeed.
* ``indeterminate`` writes may take effect at any time after their invocation, or never.

Values: the test clients write unique values, and the checkers assume it for their
diagnostics and for :func:`check_lost_writes` (a final read names the write it shows).  The
linearizability verdict itself is exact for any values.

Reductions that keep the search small without losing any linearization (each is an
exchange argument; ``test_checker_agrees_with_brute_force_on_small_histories`` backs them):
values no ``get`` returned are merged into one "unobserved" value; indeterminate writes with
the same effect and condition are taken in invocation order only; a read-only op (a get, an
observing failure) that fits the current state is linearized at once and is never a choice
point; a write may not raise the version past one that a pending ok op still needs.

A key whose search exceeds ``max_states`` memoized states yields an ``undecided``
violation, never a pass.  A failing key is explained by the earliest completion after
which its history has no linearization, the longest linearizable order found for that
prefix, and the op that could not be placed next.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence

import attrs

from tests.verify.history import WRITE_KINDS, Op


@attrs.frozen
class Violation:
    key: bytes
    kind: str
    message: str
    ops: tuple[Op, ...]


@attrs.frozen
class CheckResult:
    """``keys_checked``: keys seen; ``ops_checked``: ops that constrained the check."""

    ok: bool
    violations: list[Violation]
    keys_checked: int
    ops_checked: int


State = tuple[bytes | None, int]

_INF = float("inf")
_EXPLAIN_STATES = 50_000  # budget for the unpruned search that finds a telling prefix
_GET, _PUT, _REMOVE, _CREATE, _CAS = range(5)
_KIND = {"get": _GET, "put": _PUT, "remove": _REMOVE, "create": _CREATE, "cas": _CAS}
# modes: how an operation constrains the search
_OK, _OPTIONAL, _FAIL_EXISTS, _FAIL_MISMATCH = range(4)


def _fail_code(error: str | None) -> str:
    """Normalize ``"exists"``, ``"Exists('...')"``, ``"VersionMismatch: ..."`` and the like."""
    if not error:
        return ""
    head = error.strip().split()[0] if error.strip() else ""
    for sep in ":(,'\"":
        head = head.split(sep)[0]
    return head.lower().replace("-", "").replace("_", "")


def _mode(op: Op) -> int | None:
    """The op's constraint mode, or ``None`` if it constrains nothing and is dropped.
    Bounded reads are not linearizable by design (``tests.verify.bounded`` checks them)."""
    if op.kind == "bget":
        return None
    if op.status == "ok":
        return _OK
    if op.kind == "get":
        return None
    if op.status == "indeterminate":
        return _OPTIONAL
    code = _fail_code(op.error)
    if op.kind == "create" and code == "exists":
        return _FAIL_EXISTS
    if op.kind == "cas" and code == "versionmismatch":
        return _FAIL_MISMATCH
    return None


def describe(op: Op) -> str:
    """A short one-line rendering of an operation, for violation messages."""
    def b(v: bytes | None) -> str:
        r = repr(v)
        return r if len(r) <= 40 else r[:37] + "..."
    args = [b(op.key)]
    if op.kind in ("put", "create", "cas"):
        args.append(b(op.value))
    if op.kind == "cas":
        args.append(f"expected={op.expected_version}")
    res: str = op.status
    if op.status == "ok":
        res += f" ({b(op.result_value)}, v{op.result_version})" if op.kind in ("get", "bget") \
            else f" v{op.result_version}"
    elif op.error:
        res += f" {op.error}"
    end = "..." if op.complete_t is None else f"{op.complete_t:.6f}"
    return f"p{op.process} {op.kind}({', '.join(args)}) -> {res} [{op.invoke_t:.6f}, {end}]"


@attrs.define
class _Search:
    outcome: str  # "ok", "fail", "undecided"
    states: int
    prefix: list[int] = attrs.Factory(list)  # op indices of the longest linearized prefix
    blocker: int | None = None  # required op whose completion stopped that prefix
    pending: list[int] = attrs.Factory(list)  # ops that were candidates there
    # latest completion any branch got stuck at: every prefix of the history that ends
    # before it is linearizable (that branch linearized all ops completed earlier)
    reach: float = float("-inf")


def _search(ops: Sequence[Op], modes: Sequence[int], initial: State, max_states: int,
            track: bool = False, prune: bool = True) -> _Search:
    """Wing–Gong/Lowe search over one key's (already filtered) operations.

    ``track`` records the longest linearizable prefix for explanations; ``prune=False``
    turns off the version-bound pruning, which makes that prefix longer and more telling.
    """
    n = len(ops)
    # value ids: 0 = None, 1 = some value no get returned, 2.. = values gets returned
    vids: dict[bytes, int] = {}
    for op in ops:
        if op.kind == "get" and op.result_value is not None:
            vids.setdefault(op.result_value, len(vids) + 2)

    def vid(v: bytes | None) -> int:
        return 0 if v is None else vids.get(v, 1)

    kind = [_KIND[op.kind] for op in ops]
    wvid = [0 if op.kind == "remove" else vid(op.value) for op in ops]
    rvid = [vid(op.result_value) for op in ops]
    rver = [op.result_version for op in ops]
    exp = [op.expected_version for op in ops]
    required = [m != _OPTIONAL for m in modes]
    # Read-only ops (ok gets, fails that observed a condition) leave the state as it is.
    # If one is a candidate and fits the current state, linearizing it right now loses
    # nothing: any linearization that places it later stays valid with it moved here.  So
    # it is never a choice point: when its subtree fails, the state before it fails too.
    readonly = [k == "get" or m in (_FAIL_EXISTS, _FAIL_MISMATCH)
                for k, m in zip((op.kind for op in ops), modes)]

    # Optional writes of values no get returned (and removes) are interchangeable within a
    # class (kind, value id, expected version).  Each class is a chain in invocation order
    # of which only the head is a candidate; chains stay out of the event list, so the
    # many indeterminate writes that never took effect cost nothing per step.
    chains: list[list[int]] = []
    chain_ids: dict[tuple[int, int, int | None], int] = {}
    for i in sorted(range(n), key=lambda j: (ops[j].invoke_t, j)):
        if not required[i] and wvid[i] < 2:
            ckey = (kind[i], wvid[i], exp[i] if kind[i] == _CAS else None)
            if ckey not in chain_ids:
                chain_ids[ckey] = len(chains)
                chains.append([])
            chains[chain_ids[ckey]].append(i)
    chained = {i for c in chains for i in c}
    pos = [0] * len(chains)
    always = [c for ck, c in chain_ids.items() if ck[0] in (_PUT, _REMOVE)]
    if_absent = always + [c for ck, c in chain_ids.items() if ck[0] == _CREATE]
    cas_chains: dict[int | None, list[int]] = defaultdict(list)
    for ck, c in chain_ids.items():
        if ck[0] == _CAS:
            cas_chains[ck[2]].append(c)

    def chain_candidates(v: int, ver: int) -> list[int]:
        return (if_absent if v == 0 else always) + cas_chains.get(ver, [])

    # event list: calls (at invoke) and, for required ops, returns (at completion); at equal
    # times calls come first, so touching intervals count as concurrent (lenient).
    events: list[tuple[float, int, int]] = [(ops[i].invoke_t, 0, i) for i in range(n)
                                            if i not in chained]
    for i in range(n):
        if required[i]:
            ct = ops[i].complete_t
            events.append((max(ops[i].invoke_t, _INF if ct is None else ct), 1, i))
    events.sort()
    m = len(events)
    head, tail = m, m + 1
    nxt = [-1] * (m + 2)
    prv = [-1] * (m + 2)
    order = [head, *range(m), tail]
    for a, b in itertools.pairwise(order):
        nxt[a] = b
        prv[b] = a
    ev_time = [e[0] for e in events] + [_INF, _INF]
    is_call = [e[1] == 0 for e in events]
    op_of = [e[2] for e in events]
    match = [-1] * m
    call_entry = [0] * n
    for e, (_, c, i) in enumerate(events):
        if c == 0:
            call_entry[i] = e
    for e, (_, c, i) in enumerate(events):
        if c == 1:
            match[call_entry[i]] = e

    def step(i: int, v: int, ver: int) -> tuple[int, int] | None:
        k, md, rv = kind[i], modes[i], rver[i]
        if k == _GET:
            return (v, ver) if v == rvid[i] and (rv is None or rv == ver) else None
        if md == _FAIL_EXISTS:
            return (v, ver) if v != 0 else None
        if md == _FAIL_MISMATCH:
            return (v, ver) if ver != exp[i] else None
        if (k == _CREATE and v != 0) or (k == _CAS and ver != exp[i]):
            return None
        if md == _OK and rv is not None and rv != ver + 1:
            return None
        return (wvid[i], ver + 1)

    # Versions never go back, so a write may not move past the version that some required
    # op still to be linearized needs (an ok write's pre-version, an ok get's version).
    # Before a write from version ``ver`` no such bound is below ``ver`` (by induction), so
    # checking for bounds equal to ``ver`` is enough.
    bound = [-1] * n
    waiting: dict[int, int] = defaultdict(int)  # bound -> unlinearized required ops
    for i in range(n):
        if modes[i] == _OK and rver[i] is not None:
            bound[i] = rver[i] - (kind[i] != _GET)  # type: ignore[operator]
            waiting[bound[i]] += 1

    # An optional cas expecting a version below the current one can never apply again, so
    # whether it was taken does not matter for the future: leave it out of the memo key.
    dead_cas: list[tuple[int, int]] = [
        (e, i) for i, e in enumerate(exp) if e is not None and not required[i]
        and kind[i] == _CAS]
    live_masks: dict[int, int] = {}

    def live_mask(ver: int) -> int:
        lm = live_masks.get(ver)
        if lm is None:
            lm = ~sum(1 << i for e, i in dead_cas if e < ver)
            live_masks[ver] = lm
        return lm

    remaining = sum(required)
    if remaining == 0:
        return _Search("ok", 0)
    v, ver = vid(initial[0]), initial[1]
    mask = 0
    # frames: (list entry or -1 - chain id, op, state before, time limit for chain heads)
    stack: list[tuple[int, int, int, int, float]] = []
    cache: set[tuple[int, int, int]] = set()
    res = _Search("fail", 0)
    best = 0
    entry = nxt[head]
    k = -1  # -1: scanning the event list; >= 0: trying chain heads cands[k:]
    cands: list[int] = []
    limit = _INF
    while True:
        i = -1
        if k < 0:
            if entry != tail and is_call[entry]:
                i = op_of[entry]
            else:
                if ev_time[entry] > res.reach and entry != tail:
                    res.reach = ev_time[entry]
                if track and len(stack) == best and res.blocker is None and entry != tail:
                    # the deepest prefix is stuck at a required op's completion
                    res.blocker = op_of[entry]
                    e = nxt[head]
                    while e != entry:
                        if is_call[e]:
                            res.pending.append(op_of[e])
                        e = nxt[e]
                limit = ev_time[entry]
                cands = chain_candidates(v, ver)
                k = 0
        if k >= 0:
            while k < len(cands):
                c = cands[k]
                if pos[c] < len(chains[c]) and ops[chains[c][pos[c]]].invoke_t <= limit:
                    i = chains[c][pos[c]]
                    break
                k += 1
        dead = False
        if i >= 0:
            r = step(i, v, ver)
            if prune and r is not None and r[1] != ver and waiting[ver] > (bound[i] == ver):
                r = None
            if r is not None:
                nm = mask | (1 << i)
                ck = (nm & live_mask(r[1]) if dead_cas else nm, r[0], r[1])
                if ck not in cache:
                    cache.add(ck)
                    res.states += 1
                    if res.states > max_states:
                        res.outcome = "undecided"
                        return res
                    if k < 0:
                        stack.append((entry, i, v, ver, limit))
                        # lift the call and its return out of the list
                        nxt[prv[entry]] = nxt[entry]
                        prv[nxt[entry]] = prv[entry]
                        me = match[entry]
                        if me >= 0:
                            nxt[prv[me]] = nxt[me]
                            prv[nxt[me]] = prv[me]
                            remaining -= 1
                    else:
                        stack.append((-1 - cands[k], i, v, ver, limit))
                        pos[cands[k]] += 1
                    if bound[i] >= 0:
                        waiting[bound[i]] -= 1
                    mask = nm
                    v, ver = r
                    if remaining == 0:
                        res.outcome = "ok"
                        return res
                    if track and len(stack) > best:
                        best = len(stack)
                        res.prefix = [s[1] for s in stack]
                        res.blocker = None
                    entry = nxt[head]
                    k = -1
                    continue
                # a read-only op that fits here but whose successor state is known dead:
                # this state is dead as well (see the note on read-only ops above)
                dead = readonly[i]
            if not dead:
                if k < 0:
                    entry = nxt[entry]
                else:
                    k += 1
                continue
        # backtrack; popping a read-only op means its whole level is dead, so pop on
        while True:
            if not stack:
                return res
            entry, i, v, ver, limit = stack.pop()
            if entry < 0:
                pos[-1 - entry] -= 1
            else:
                me = match[entry]
                if me >= 0:
                    nxt[prv[me]] = me
                    prv[nxt[me]] = me
                    remaining += 1
                nxt[prv[entry]] = entry
                prv[nxt[entry]] = entry
            mask ^= 1 << i
            if bound[i] >= 0:
                waiting[bound[i]] += 1
            if not readonly[i]:
                break
        if entry < 0:
            cands = chain_candidates(v, ver)
            k = cands.index(-1 - entry) + 1
        else:
            entry = nxt[entry]
            k = -1


def _truncate(ops: Sequence[Op], modes: Sequence[int], t: float) -> tuple[list[Op], list[int]]:
    """The history as it stood at time ``t``: running writes become optional."""
    out: list[Op] = []
    out_modes: list[int] = []
    for op, md in zip(ops, modes):
        if op.invoke_t > t:
            continue
        done = md != _OPTIONAL and op.complete_t is not None and op.complete_t <= t
        if done:
            out.append(op)
            out_modes.append(md)
        elif op.kind in WRITE_KINDS and md in (_OK, _OPTIONAL):
            out.append(op)
            out_modes.append(_OPTIONAL)
    return out, out_modes


def _replay(initial: State, ops: Iterable[Op]) -> State:
    value, version = initial
    for op in ops:
        if op.kind in WRITE_KINDS and op.status != "fail":
            value, version = (None if op.kind == "remove" else op.value), version + 1
    return value, version


def _explain(key: bytes, ops: list[Op], modes: list[int], initial: State,
             max_states: int, reach: float) -> Violation:
    """Find the earliest completion after which the history stops being linearizable.

    Truncations are monotone (if the history up to time t is linearizable, so is every
    shorter one) and every truncation before ``reach`` is known to pass, so the first probe
    is at ``reach``, which often settles it; otherwise a binary search follows.  (A probe
    that runs out of ``max_states`` counts as failing.)
    """
    times = sorted({op.complete_t for op, md in zip(ops, modes)
                    if md != _OPTIONAL and op.complete_t is not None}) or [_INF]
    hi = len(times) - 1  # invariant: the truncation at times[hi] fails
    lo = min(bisect.bisect_left(times, reach), hi)
    sub, sub_modes = _truncate(ops, modes, times[lo])
    s = _search(sub, sub_modes, initial, max_states)
    if s.outcome != "ok":
        hi = lo
    else:
        lo += 1
        while lo < hi:
            mid = (lo + hi) // 2
            sub, sub_modes = _truncate(ops, modes, times[mid])
            if _search(sub, sub_modes, initial, max_states).outcome == "ok":
                lo = mid + 1
            else:
                hi = mid
    t = times[hi]
    sub, sub_modes = _truncate(ops, modes, t)
    s = _search(sub, sub_modes, initial, min(max_states, _EXPLAIN_STATES), track=True,
                prune=False)
    if s.outcome == "undecided":
        s = _search(sub, sub_modes, initial, max_states, track=True)
    culprit = next((op for op, md in zip(sub, sub_modes)
                    if md != _OPTIONAL and op.complete_t == t), None)
    prefix = [sub[i] for i in s.prefix]
    value, version = _replay(initial, prefix)
    lines = []
    if culprit is not None:
        lines.append(f"the history up to the completion of {describe(culprit)} "
                     f"({len(sub)} ops) has no linearization (every shorter prefix has)")
    lines.append(f"the longest linearizable order found has {len(prefix)} op(s), ending in "
                 "state "
                 f"({value!r}, v{version})"
                 + (f" after {describe(prefix[-1])}" if prefix else ""))
    involved: list[Op] = prefix[-3:]
    if s.blocker is not None:
        blocker = sub[s.blocker]
        lines.append(f"then {describe(blocker)} cannot be placed before its completion")
        involved.append(blocker)
        involved.extend(sub[i] for i in s.pending[:8] if sub[i] is not blocker)
    if culprit is not None and culprit not in involved:
        involved.append(culprit)
    return Violation(key, "not_linearizable", f"key {key!r}: " + "; ".join(lines),
                     tuple(involved))


def check_linearizable(ops: Iterable[Op], initial: dict[bytes, State] | None = None,
                       max_states: int = 2_000_000) -> CheckResult:
    """Check every key's history against the DDS register model (see module doc)."""
    by_key: dict[bytes, list[tuple[Op, int]]] = defaultdict(list)
    for op in ops:
        md = _mode(op)
        by_key.setdefault(op.key, [])  # a key with only dropped ops still counts
        if md is not None:
            by_key[op.key].append((op, md))
    violations: list[Violation] = []
    total = 0
    for key in sorted(by_key):
        pairs = sorted(by_key[key], key=lambda p: p[0].invoke_t)
        key_ops = [p[0] for p in pairs]
        modes = [p[1] for p in pairs]
        total += len(key_ops)
        init = (initial or {}).get(key, (None, 0))
        s = _search(key_ops, modes, init, max_states)
        if s.outcome == "undecided":
            violations.append(Violation(
                key, "undecided",
                f"key {key!r}: search exceeded max_states={max_states} over "
                f"{len(key_ops)} ops; linearizability not decided", tuple(key_ops[:10])))
        elif s.outcome == "fail":
            violations.append(_explain(key, key_ops, modes, init, max_states, s.reach))
    return CheckResult(not violations, violations, len(by_key), total)


def check_lost_writes(ops: Iterable[Op], final_reads: dict[bytes, State]) -> CheckResult:
    """Every acknowledged write is the final state of its key or was overwritten.

    A write acked with version ``v`` passes if the key's final version is above ``v``, or
    equal to ``v`` with the final value equal to the write's (``None`` for ``remove``).
    A key with acknowledged writes but no entry in ``final_reads`` is reported as
    ``no_final_read``.  Writes acked without a version cannot be checked and are skipped.
    """
    violations: list[Violation] = []
    keys: set[bytes] = set(final_reads)
    checked = 0
    missing: dict[bytes, list[Op]] = defaultdict(list)
    for op in ops:
        if op.status != "ok" or op.kind not in WRITE_KINDS or op.result_version is None:
            continue
        keys.add(op.key)
        checked += 1
        if op.key not in final_reads:
            missing[op.key].append(op)
            continue
        fvalue, fversion = final_reads[op.key]
        written = None if op.kind == "remove" else op.value
        if op.result_version > fversion or (op.result_version == fversion
                                            and fvalue != written):
            violations.append(Violation(
                op.key, "lost",
                f"key {op.key!r}: acknowledged {describe(op)} is neither the final state "
                f"({fvalue!r}, v{fversion}) nor overwritten by a higher version", (op,)))
    for key, lost in sorted(missing.items()):
        violations.append(Violation(key, "no_final_read",
                                    f"key {key!r}: {len(lost)} acknowledged writes but no "
                                    "final read to check them against", tuple(lost)))
    return CheckResult(not violations, violations, len(keys), checked)
