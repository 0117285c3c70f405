"""Which partition replicas this brick keeps on disk, as the map says (DESIGN §2, §8).

At start and after every map change: a replica of each partition of this brick's RGs
exists (empty if new); one that no RG of this brick lists any more is dropped if a
finished reorganization of this brick accounts for it (moved away, split, merged), else
quarantined for ``brick.quarantine_hours`` (a record that should not have said so must
not cost data).  And, once at start, the YES votes recorded before a stop are prepared
again, with their locks, before anything is served.
"""

from __future__ import annotations

from twisted.logger import Logger

from dds.maps import ClusterMap
from dds.metrics import Metrics

from dds.bricks.mapstate import MapState, parse_pid
from dds.bricks.participant import Participant
from dds.bricks.quarantine import Quarantine, reorganized
from dds.bricks.storage import Storage

#: A restored prepared transaction asks the other members this soon after a restart.
RESOLVE_AFTER_RESTART_S = 1.0


class LocalReplicas:
    log = Logger()

    def __init__(self, brick_id: str, maps: MapState, storage: Storage,
                 participant: Participant, quarantine: Quarantine, metrics: Metrics) -> None:
        self.id = brick_id
        self.maps = maps
        self.storage = storage
        self.participant = participant
        self.quarantine = quarantine
        self.metrics = metrics
        #: The map the replicas on disk were last reconciled with.
        self.reconciled: ClusterMap | None = None

    def reconcile(self) -> None:
        """Open the replicas the map gives this brick; drop or quarantine the others."""
        mine = self.maps.my_partitions()
        for pid in mine:
            if not self.storage.has_partition(str(pid)):
                self.storage.open_partition(str(pid))
                self.log.info("created replica of {pid}", pid=str(pid))
        if not self.maps.map.rgs_of_brick(self.id):
            return      # not (yet) in any RG: keep whatever is on disk
        old, self.reconciled = self.reconciled, self.maps.map
        for text in self.storage.partitions():
            pid = parse_pid(text)
            if pid not in mine:
                self.participant.forget_partition(pid)
                why = reorganized(old, self.maps.map, self.id, pid)
                if why is not None:
                    self.storage.drop_partition(text)
                    self.metrics.inc("replicas_dropped_total")
                    self.log.warn("dropped replica of {pid}: {why}", pid=text, why=why)
                else:
                    self.quarantine.put(text, "no RG of mine lists it")

    def restore_prepared(self) -> None:
        """Transactions this brick voted YES on before it stopped are prepared again, with
        their locks, before it serves anything; termination resolves them shortly."""
        records = self.storage.prepared()
        if records:
            n = self.participant.restore(records, resolve_after_s=RESOLVE_AFTER_RESTART_S)
            self.log.warn("restored {n} prepared transactions of {total} recorded; resolving "
                          "them with the other members", n=n, total=len(records))
