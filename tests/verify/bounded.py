"""The bounded-staleness check (DESIGN §3): every bounded read returned a value that was
current at some moment no earlier than its invocation minus its bound.

A bounded read (kind ``bget``; its bound in ms is recorded in ``expected_version``) that
returned version ``n`` of a key breaks that promise when the write that made version
``n + 1`` had already *completed* before ``invoke − bound``: version ``n`` was overwritten
by then, so it was not current at any moment in the window.  (A write that completed
later may still have taken effect later; its effect point is not known.)  It also may not
return a version that no write had been *invoked* for before the read completed, nor a
value other than the one written at that version by an acknowledged write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from tests.verify.history import WRITE_KINDS, Op
from tests.verify.linearizability import CheckResult, Violation, describe


def check_bounded_reads(ops: Iterable[Op]) -> CheckResult:
    all_ops = list(ops)
    # key -> version -> the acknowledged write that created it
    made: dict[bytes, dict[int, Op]] = defaultdict(dict)
    for op in all_ops:
        if op.kind in WRITE_KINDS and op.status == "ok" and op.result_version is not None:
            made[op.key][op.result_version] = op
    violations: list[Violation] = []
    checked = 0
    keys: set[bytes] = set()
    for read in all_ops:
        if read.kind != "bget" or read.status != "ok" or read.result_version is None:
            continue
        keys.add(read.key)
        checked += 1
        bound_s = (read.expected_version or 0) / 1000.0
        n = read.result_version
        writes = made.get(read.key, {})
        after = writes.get(n + 1)
        if after is not None and after.complete_t is not None \
                and after.complete_t < read.invoke_t - bound_s:
            violations.append(Violation(
                read.key, "too_stale",
                f"key {read.key!r}: {describe(read)} (bound {bound_s:g}s) returned v{n}, "
                f"but v{n + 1} was acknowledged {read.invoke_t - after.complete_t:.3f}s "
                "before the read began", (after, read)))
        own = writes.get(n)
        if own is not None:
            written = None if own.kind == "remove" else own.value
            if written != read.result_value:
                violations.append(Violation(
                    read.key, "wrong_value",
                    f"key {read.key!r}: {describe(read)} returned v{n} with another value "
                    f"than {describe(own)} wrote", (own, read)))
            elif read.complete_t is not None and own.invoke_t > read.complete_t:
                violations.append(Violation(
                    read.key, "from_the_future",
                    f"key {read.key!r}: {describe(read)} returned v{n}, written by an "
                    "operation invoked after the read completed", (own, read)))
    return CheckResult(not violations, violations, len(keys), checked)
