"""``dds-admin add-brick``, ``remove-brick`` and ``rebalance`` (DESIGN §8): which bricks
hold the replicas of which replica group, changed online as journaled jobs.

**The changes a plan is made of** (:class:`Change`):

- *replace* ``old → new`` in RG ``g``: ``rg_update add_member=new`` (``new`` joins as
  ``recovering`` and re-syncs by itself, by partition copy from an active member, exactly
  as a restarted brick does, DESIGN §7), wait until readmission made it ``active``, then
  ``rg_update remove_member=old``.  The RG never has fewer active members than before,
  and writes pause only for recovery's short fenced delta;
- *add* ``new`` to an RG with fewer members than the replication factor (the first two
  steps only); *remove* ``old`` without a replacement (the last step only:
  ``remove-brick --no-drain``, or ``--force`` where nothing can replace it);
- *move* a partition to another RG: a ``dds-admin move`` job of its own
  (``tools/move.py``), for finer steps than whole RGs;
- *create* a new RG, empty, all members active: its record pushed at version 1 to every
  brick, as ``init`` does; moves then fill it.

**Planner rules** (:func:`plan_changes`, a pure function of the layout, unit-tested):

1. *Drain*: every RG listing a brick being removed gets the eligible brick that leaves
   the load most level in its place.  Eligible: reachable, not retired, not being
   removed, not yet a member, and on a failure domain (``BrickRecord.host``) none of the
   RG's members has (the outgoing one included: the brick checks it against all current
   members).  No eligible brick: refused, or with ``--force`` the brick is just removed
   (the RG shrinks).  ``--no-drain`` removes without replacement, refused when an RG
   would keep fewer active members than a majority of the replication factor.  Removing
   an RG's last active member is refused even with ``--force``.  An RG with more
   members than the replication factor just loses the brick.
2. *Fill*: an RG with fewer members than the replication factor gets eligible bricks.
3. *Balance* (add-brick, rebalance): the load of a brick is the number of partitions of
   every RG it is a member of (what it stores).  Target: every brick within ±1 of the
   mean (over the bricks that are members or may receive).  Greedy: repeatedly the
   replacement or move that most reduces the excess over ±1 per byte copied (ties: fewest
   bytes, then the most level result), stopping as soon as the target is reached; when
   nothing reduces the excess, steps that make the load more level without raising it.
   A brick added to an RG by the plan is not moved out of it again, a brick removed is
   not put back, and a partition moves at most once.
4. *New RGs* only when the target cannot be reached without them (RG sizes too coarse,
   or a brick in every RG): the plan is made again with one, two, ... new RGs (members:
   bricks in fewest RGs, distinct hosts) and the first that reaches the target is kept;
   none reaches it: the closest.  A new RG no move fills is dropped from the plan.

Bytes are the key + value bytes of each active partition, as one active member reports
them (``range_checksums`` with one bucket: a scan in the brick's thread pool); a copy
moves the SQLite files, which are somewhat larger.  A plan that cannot reach the target
says so in its notes.

**Journal**: one job per command (kind ``add-brick``, ``remove-brick``, ``rebalance``)
whose plan lists the changes; steps ``registered`` (add-brick), then per change ``i``:
``<i>.added``, ``<i>.active``, ``<i>.removed``, ``<i>.rolled-back``, ``<i>.created``,
``<i>.moved``; ``retired`` (remove-brick).  Up to ``--parallel`` changes run at once; a
change waits for the earlier changes of the RGs it alters.  A failed or cancelled
change is rolled back (its new member removed) unless the new member is already active
and serves, in which case it is finished.  ``dds-admin repair`` (:func:`resume`) settles
the changes in flight the same way (it waits for a recovering new member while its
recovery progresses, and rolls back one whose new brick is gone), starts none of the
others, and ends the job ``done`` or ``cancelled``; run the command or ``rebalance``
again to go on.  A move has its own job, which repair settles first (it is newer).

**Retired bricks**: the map cannot delete a record.  A brick that ``remove-brick``
emptied gets its brick record re-pushed with ``host = "retired:<old host>"``, so that
``rebalance`` never gives it replicas again; ``add-brick`` of the same id registers it
afresh.

The package: :mod:`.plan` (the pure planner), :mod:`.progress` (views),
:mod:`.calls` (the cluster handle), :mod:`.execute` (the executor), :mod:`.operations`
(the three operations and repair's ``resume``) and :mod:`.render` (output); the click
commands are in ``tools/membershipcmd.py``.
"""

from __future__ import annotations

from dds.tools.membership.calls import Cluster, partition_sizes
from dds.tools.membership.execute import Cancelled, ChangeFailed, Executor, Options
from dds.tools.membership.operations import add_brick, rebalance, remove_brick, resume
from dds.tools.membership.plan import (RETIRED, Change, Group, Layout, Plan, is_retired,
                                       layout_from_map, plan_changes)
from dds.tools.membership.progress import ProgressView, QuietView, View
from dds.tools.membership.render import render_plan, render_report

__all__ = [
    "RETIRED",
    "Cancelled",
    "Change",
    "ChangeFailed",
    "Cluster",
    "Executor",
    "Group",
    "Layout",
    "Options",
    "Plan",
    "ProgressView",
    "QuietView",
    "View",
    "add_brick",
    "is_retired",
    "layout_from_map",
    "partition_sizes",
    "plan_changes",
    "rebalance",
    "remove_brick",
    "render_plan",
    "render_report",
    "resume",
]
