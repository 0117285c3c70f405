"""``dds-admin scrub [PARTITION]``: compare the replicas of partitions, report the keys
that differ, and with ``--fix`` re-copy a replica that disagrees with the majority.

For each partition (or the one given) every active member of its RG is asked for
``range_checksums``: the replica cut into key-hash buckets, a count and an
order-independent checksum per bucket (``bricks/scrub.py`` defines the buckets).  Equal
checksums everywhere: the replicas agree.  Otherwise:

1. **Re-check.**  Writes may be in flight: a bucket can differ for the moment one replica
   has committed a write another has not yet.  So the differing buckets are asked again
   after a short pause (:data:`RECHECK_PAUSE_S`); only those that differ both times are
   reported, and the output says how many settled.
2. **Keys.**  For each bucket that still differs (at most :data:`MAX_KEY_BUCKETS` of
   them) every member lists the bucket's keys with version and value hash
   (``range_keys``); each key whose replicas disagree is reported with every replica's
   version.  Same version with different values is *divergence* (the replicas took
   different writes for the same version); different versions mean a replica missed
   writes.  A bucket whose listings agree after all settled meanwhile.
3. **Majority.**  Members are grouped by what they hold in the differing buckets.  A
   group larger than half the active members is the majority; the others are the
   minority.  No majority (three different replicas, two members that differ): reported,
   and ``--fix`` refuses.
4. **Fix** (``--fix``).  A minority brick re-copies its replicas by the ``recover`` RPC
   for the RG (DESIGN §7; what ``dds-admin recover`` does), followed until it is done and
   the brick is active again, then the partition is scrubbed again to confirm.  Recovery
   re-copies *every* partition of the RG from an active member the brick chooses, so
   before fixing, every partition of the RG is checked (also those not asked for), and
   the fix is refused when that member could be a minority replica itself, or when any
   partition of the RG has no majority or could not be compared.
5. **Damaged replicas.**  A member whose replica cannot be read answers ``ReplicaDamaged``
   (``bricks/damage.py``): it has set the file aside and re-copies the RG by itself.  The
   partition is compared on the other members; its state is ``damaged`` (or
   ``differing``, if those differ too), and ``--fix`` follows that member's re-copy like
   any other (``recover`` finds it running) and scrubs the partition again to confirm.

The outcome is a plain dict (what ``--json`` prints); :func:`render` draws it for
people.  Progress goes through a :class:`View`.  ``ok`` (exit status 0) means every
replica of every checked partition agrees, or was fixed and confirmed.

The package: :mod:`.compare` (options, findings and every conclusion, pure),
:mod:`.run` (the requests to the bricks, the fixes), :mod:`.progress` (views) and
:mod:`.render` (output); the click command is in ``tools/scrubcmd.py``.
"""

from __future__ import annotations

from dds.tools.scrub.compare import (MAX_BUCKETS, RECHECK_PAUSE_S, KeyDiff, Options,
                                     PartitionResult, agreement, diff_keys,
                                     differing_buckets, fix_plan, make_report)
from dds.tools.scrub.progress import ProgressView, QuietView, View
from dds.tools.scrub.render import render
from dds.tools.scrub.run import Scrub, scrub

__all__ = ["Options", "View", "QuietView", "ProgressView", "KeyDiff", "PartitionResult",
           "Scrub", "scrub", "render", "make_report", "differing_buckets", "diff_keys",
           "agreement", "fix_plan", "RECHECK_PAUSE_S", "MAX_BUCKETS"]
