"""The catalogue of every metric DDS exports: name, type, help text and label names.

One place, so ``/metrics`` carries a ``# HELP`` for everything, every metric exists (at
zero) from the start, and a name used in the code but not declared here fails loudly
(``KeyError`` at the call, and ``tests/unit/test_metrics.py`` finds every literal name
in the source).  ``docs/operations.md`` lists the brick's metrics; a test checks each
listed name against a real brick's ``/metrics``.

To add a metric: one line in ``BRICK`` (or ``CLIENT``), e.g.
``counter("widgets_dropped", "widgets dropped because ...")`` or
``counter("widgets", "widgets seen, by kind", labels=("kind",))``; then count it with
``metrics.inc("widgets_dropped")`` (``"widgets_dropped_total"`` is accepted too) or
``metrics.inc("widgets", kind="blue")``, and add a row to docs/operations.md.
Names are given without the prefix (``dds_``, ``dds_client_``) and, for counters,
without ``_total``, which the exposition adds.
"""

from __future__ import annotations

from typing import Iterable, Literal

import attrs

from dds.errors import DDSError

Kind = Literal["counter", "gauge", "histogram"]

#: Latency buckets in seconds: a cached read takes tens of microseconds, a 2PC write a
#: few milliseconds, a write waiting for a lock or a slow disk up to seconds.
LATENCY_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                      0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@attrs.frozen
class MetricDef:
    """One metric.  ``callback``: its value is read from a function at scrape time
    (``Metrics.gauge``) instead of being counted (every gauge is)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    #: Label values exported from the start (at zero), one tuple per series.
    initial: tuple[tuple[str, ...], ...] = ()
    callback: bool = False
    buckets: tuple[float, ...] = LATENCY_BUCKETS


def counter(name: str, help: str, labels: tuple[str, ...] = (),
            initial: Iterable[tuple[str, ...]] = (), callback: bool = False) -> MetricDef:
    return MetricDef(name, "counter", help, labels, tuple(initial), callback)


def gauge(name: str, help: str, labels: tuple[str, ...] = ()) -> MetricDef:
    return MetricDef(name, "gauge", help, labels, (), True)


def histogram(name: str, help: str, labels: tuple[str, ...] = (),
              initial: Iterable[tuple[str, ...]] = ()) -> MetricDef:
    return MetricDef(name, "histogram", help, labels, tuple(initial))


class Catalogue:
    """The declared metrics of one kind of process, under one name prefix."""

    def __init__(self, prefix: str, defs: Iterable[MetricDef]) -> None:
        self.prefix = prefix
        self.defs: dict[str, MetricDef] = {}
        for d in defs:
            if d.name in self.defs:
                raise ValueError(f"metric {d.name!r} declared twice")
            if d.name.endswith("_total") or not d.help:
                raise ValueError(f"metric {d.name!r}: give a help text, and no _total")
            self.defs[d.name] = d

    def lookup(self, name: str) -> MetricDef:
        """The metric called ``name``; a counter may be named with its ``_total``."""
        d = self.defs.get(name)
        if d is None and name.endswith("_total"):
            d = self.defs.get(name[:-6])
            if d is not None and d.kind != "counter":
                d = None
        if d is None:
            raise KeyError(f"metric {name!r} is not declared: add it to {self.prefix!r}'s "
                           "catalogue in dds/metricdefs.py")
        return d


def _error_codes() -> tuple[tuple[str], ...]:
    codes: set[str] = set()
    todo: list[type[DDSError]] = [DDSError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return tuple((c,) for c in sorted(codes))


#: What a connection counts, on both ends (``dds.rpc``): in the brick's and the library's.
_RPC: tuple[MetricDef, ...] = (
    counter("handshake_failures", "connections whose handshake failed (bad or missing "
            "credentials, wrong cluster, timeout, TLS or plaintext mismatch)"),
    counter("auth_failures", "handshakes refused for their credentials"),
    counter("frames_malformed", "frames that could not be decoded (the connection is "
            "closed)"),
    counter("frames_oversize", "frames above limits.max_frame_bytes (the connection is "
            "closed)"),
    counter("connections_paused", "times a connection was no longer read from because "
            "more than limits.max_unsent_bytes of replies waited for its peer"),
    counter("internal_errors", "requests that failed with an unexpected exception (a "
            "bug; logged with its traceback)"),
    counter("silence_probes", "pings sent on a connection whose requests had no reply at "
            "all for the probe delay (the library's connections: 0.5 s)"),
    counter("silent_peers", "connections closed because the peer answered nothing, not "
            "even a ping (a paused or hung process): their requests failed with Timeout"),
    counter("oneway_failures", "one-way requests (a parallel commit's COMMIT) whose "
            "handler failed; nobody waits for their answer, so it is logged instead"),
)

_DATA_OPS = (("get",), ("prepare",), ("commit",), ("abort",))

BRICK = Catalogue("dds", _RPC + (
    gauge("build_info", "the DDS version this brick runs (value 1)", labels=("version",)),
    # -- requests --------------------------------------------------------------------------
    counter("requests", "requests handled, by message type", labels=("type",),
            initial=_DATA_OPS),
    counter("errors", "requests answered with an error, by error code", labels=("code",),
            initial=_error_codes()),
    histogram("request_seconds", "time from a request's arrival to its answer, by message "
              "type", labels=("type",), initial=_DATA_OPS),
    counter("requests_denied", "requests refused because the connection's role may not "
            "send them (also counted as errors{code=\"permission_denied\"})"),
    counter("reads_waited", "reads that waited for the outcome of a prepared key"),
    counter("no_lease_refusals", "reads or votes refused because this brick held no valid "
            "membership lease for the RG"),
    # -- transactions --------------------------------------------------------------------
    gauge("txns_prepared", "transactions prepared here and not yet decided"),
    gauge("locks_held", "record locks held by prepared transactions"),
    counter("prepare_yes", "PREPAREs voted YES"),
    counter("prepare_no", "PREPAREs voted NO (version mismatch, exists, ...)"),
    counter("prepare_locked", "PREPAREs refused because the key was locked (wait-die)"),
    counter("prepare_fenced", "PREPAREs refused because their partition was fenced for a "
            "copy, split or move"),
    counter("prepare_record_failures", "YES votes that could not be recorded durably"),
    counter("commits", "transactions committed"),
    counter("commit_failures", "commits that failed to apply"),
    counter("aborts", "transactions aborted"),
    counter("aborts_refused", "coordinator ABORTs refused because termination already "
            "owned the outcome"),
    counter("txn_in_doubt", "prepared transactions whose deadline passed without an "
            "outcome (before termination asked the other members)"),
    counter("txn_terminations", "deadline-timer runs of termination, including retries"),
    counter("txn_early_asks", "prepared transactions asked about before their deadline "
            "because a read, a PREPARE or a fence's drain wanted their key"),
    counter("txn_resolutions", "transactions resolved on request (dds-admin repair)"),
    # -- connections ---------------------------------------------------------------------
    gauge("connections", "RPC connections open"),
    gauge("paused_connections", "connections the brick stops reading from now, because "
          "their replies pile up (connections_paused_total counts the stops)"),
    gauge("connections_unauthenticated", "connections still in their handshake"),
    counter("connections_refused", "connections refused at once: too many handshakes in "
            "progress (auth.max_unauthenticated*)"),
    counter("tls_plaintext_refused", "plaintext connections refused by a TLS brick"),
    gauge("tls_cert_expiry_seconds", "seconds until this brick's certificate or its CA "
          "expires, whichever is first (TLS mode only)"),
    counter("tls_cert_expiry_warnings", "warnings logged because the certificate expires "
            "soon"),
    # -- maps, leases and membership -----------------------------------------------------
    counter("stale_map", "requests routed by a map other than this brick's (answered "
            "StaleMap)"),
    counter("stale_map_fp", "of stale_map: a record at this brick's version with another "
            "fingerprint (a caller's stale or made-up view)"),
    counter("map_divergence", "records offered by a brick (gossip, push) at this brick's "
            "version with another fingerprint"),
    counter("map_records_adopted", "map records adopted (newer than this brick's)"),
    counter("map_records_refused", "map records refused (invalid, or not from a member)"),
    counter("map_load_failures", "unreadable map files ignored at start"),
    counter("gossip_rounds", "gossip rounds run"),
    counter("gossip_failures", "gossip rounds that could not reach their peer"),
    gauge("leases_valid", "RGs for which this brick holds a valid membership lease"),
    counter("lease_rounds", "lease renewal rounds run"),
    counter("lease_renew_failures", "lease renewals that failed"),
    counter("lease_grants", "leases granted to other members"),
    counter("lease_refusals", "leases refused to other members"),
    counter("record_changes", "RG record changes (exclusion, readmission, ...) committed "
            "by this brick as coordinator"),
    counter("record_changes_refused", "RG record changes this brick coordinated that did "
            "not reach a quorum"),
    counter("record_votes", "RG record change votes given"),
    counter("exclusions_refused_alive", "exclusions refused because the suspect answered"),
    # -- replicas, recovery and reorganization -------------------------------------------
    gauge("partitions", "partition replicas this brick holds"),
    counter("replicas_quarantined", "replicas set aside because the map no longer places "
            "them here"),
    counter("replicas_restored", "quarantined replicas restored by an operator"),
    counter("replicas_dropped", "replicas deleted (their quarantine expired or a "
            "reorganization moved them)"),
    counter("quarantine_expired", "quarantined replicas whose retention expired"),
    counter("recoveries_started", "replica re-copies started"),
    counter("recoveries_done", "replica re-copies finished"),
    counter("recovery_attempts_failed", "re-copy attempts that failed (retried)"),
    counter("recovery_bytes", "bytes copied by re-copies"),
    counter("copy_sessions", "copy sessions served to another brick"),
    counter("changes_pages", "change stream pages served"),
    counter("changes_rows", "change stream rows served"),
    counter("changes_positions", "change stream positions resumed from, by how they "
            "were read here (exact, time, beginning, now)", labels=("how",)),
    counter("copy_bytes_sent", "bytes sent by copy sessions"),
    counter("copy_cancelled", "copy sessions cancelled"),
    counter("copy_snapshots_shared", "copy sessions that shared another session's "
            "snapshot"),
    counter("copy_fences", "partitions fences set for a copy's final delta"),
    counter("copy_fences_lapsed", "copy (move) write fences lifted because their holder "
            "stopped renewing them"),
    counter("stream_refused", "snapshot stream connections refused, by reason",
            labels=("reason",), initial=(("auth",), ("busy",), ("protocol",), ("request",),
                                         ("timeout",))),
    counter("stream_auth_failures", "snapshot stream connections with a bad token"),
    counter("backup_snapshots", "partition snapshots taken for dds-admin backup"),
    counter("backup_bytes_sent", "bytes of backup snapshots sent to dds-admin backup"),
    counter("backup_sessions_expired", "backup or restore sessions dropped after "
            "hearing nothing for a minute (a killed tool)"),
    counter("restore_bytes_received", "bytes of partition files received by dds-admin "
            "restore"),
    counter("restore_installs", "replicas installed from a backup by dds-admin restore"),
    counter("dr_rows_applied", "rows of the primary's change stream written by dr_apply "
            "(a DR site)"),
    counter("dr_rows_skipped", "rows dr_apply skipped because the replica's copy was as "
            "new or newer"),
    counter("dr_apply_refused", "dr_apply requests refused (not a follower, stale map, "
            "not serving, fenced, locked key, bad rows); nothing of them applied"),
    counter("move_pulls", "partitions taken in by a move"),
    counter("split_prepares", "split or merge jobs prepared"),
    counter("split_finishes", "split or merge jobs finished"),
    counter("split_failures", "split or merge jobs failed"),
    counter("split_fences", "split or merge write fences set"),
    counter("split_fences_lapsed", "split or merge write fences lifted by their timer"),
    counter("split_foreign_rows", "rows copied by a split or merge from another partition"),
    counter("journal_writes", "admin journal steps written"),
    counter("journal_jobs_dropped", "old finished admin journal jobs dropped"),
    counter("dr_replays", "client journal replays at this promoted DR site, by outcome "
            "(applied: committed here; newer, window_closed, not_promoted: refused); every "
            "member of the RG counts each replay it voted on", labels=("outcome",),
            initial=(("applied",), ("newer",), ("window_closed",), ("not_promoted",))),
    # -- row checksums, self-repair and the scrubber ---------------------------------------
    counter("checksum_failures", "rows found failing their checksum (reads, votes, row "
            "requests, the scrubber)"),
    counter("checksum_repairs", "damaged rows replaced from the replica group"),
    counter("checksum_repair_failures", "repairs of damaged rows given up after their "
            "retries"),
    counter("checksum_repairs_deferred", "damaged rows found while 1,000 repairs were "
            "already running (left to a later read or pass)"),
    counter("checksums_migrated", "rows of files written before checksums given one"),
    gauge("checksum_migrations_pending", "partitions whose rows still wait for their "
          "checksum"),
    counter("scrub_rows_verified", "rows the scrubber verified"),
    gauge("scrub_bytes_verified", "key and value bytes verified in the current scrub pass"),
    gauge("scrub_pass", "the scrub pass number"),
    gauge("scrub_last_pass_completed_seconds", "Unix time the last scrub pass completed "
          "(0 before the first)"),
    gauge("txlog_damaged_records", "damaged log batches and records found at start"),
    # -- unreadable partition files and a full disk --------------------------------------
    gauge("damaged_replicas", "partitions whose file was unreadable, not yet re-copied"),
    counter("replicas_damaged", "unreadable partition files set aside in quarantine"),
    counter("replicas_damaged_recopied", "partitions copied again after their file was "
            "set aside"),
    gauge("storage_full", "1 while the brick refuses writes for lack of space"),
    gauge("storage_free_bytes", "free bytes in the data directory's filesystem"),
    counter("storage_full_episodes", "times the brick became full"),
    counter("storage_full_refusals", "PREPAREs refused with StorageFull"),
    counter("storage_full_exclusions", "RGs that excluded the brick at its request while "
            "its disk was full"),
    # -- storage (read from the storage layer's own counts at scrape time) ---------------
    *(counter(f"storage_{name}", text, callback=True) for name, text in (
        ("reads", "reads served by storage"),
        ("cache_hits", "reads served from the row cache"),
        ("writes", "rows staged for a group commit"),
        ("commits", "group commits to SQLite"),
        ("committed_rows", "rows committed by group commits"),
        ("commit_failures", "group commits that failed"),
        ("log_writes", "transaction log writes"),
        ("log_failures", "transaction log writes that failed"),
        ("log_rotations", "transaction log rotations"),
        ("checkpoint_failures", "SQLite checkpoints that failed"),
    )),
))

CLIENT = Catalogue("dds_client", _RPC + (
    gauge("build_info", "the DDS library version (value 1)", labels=("version",)),
    histogram("request_seconds", "time of a library call from start to outcome (success "
              "or error), by operation", labels=("op",),
              initial=(("get",), ("put",), ("remove",), ("create",), ("cas",))),
    counter("get_retries", "reads retried on another replica"),
    counter("get_replica_errors", "reads one replica could not serve (ReplicaDamaged or "
            "an internal error), tried on another"),
    counter("write_member_stepping_out", "writes refused by a member with StorageFull or "
            "ReplicaDamaged, retried"),
    counter("changes_failovers", "change stream pages asked of another replica after "
            "one failed (not serving, unreachable, damaged)"),
    counter("get_hedged", "reads also sent to a second replica because the first had not "
            "answered within the hedge delay"),
    counter("write_retries", "writes retried after a failed attempt (nothing applied)"),
    counter("write_fenced_retries", "write retries during a recovery's or move's write "
            "fence"),
    counter("write_stale_map", "write attempts refused for a stale map"),
    counter("route_retries", "routing retries while the map has no route for a key"),
    counter("map_repairs", "map refreshes after a StaleMap answer"),
    counter("indeterminate", "writes whose outcome could not be known (Indeterminate)"),
    counter("unavailable", "calls that failed because no brick could be reached"),
    counter("exclusions_requested", "exclusions of an unresponsive brick asked for"),
    counter("exclusions", "exclusions that took effect"),
    counter("exclusions_refused", "exclusions refused by the RG"),
    # -- the DR journal and failover (lib/drjournal.py, lib/drsite.py) -------------------
    gauge("dr_journal_entries", "acknowledged writes kept until a tag shows the DR site "
          "holds them (every client of the registry)"),
    gauge("dr_journal_bytes", "bytes of those writes (keys, values and a fixed overhead "
          "each)"),
    counter("dr_journal_full", "writes refused with JournalFull (nothing applied) because "
            "the DR journal had no room"),
    counter("dr_journal_covered", "journal entries dropped because a tag covered them or "
            "a newer write of their key superseded them"),
    counter("dr_tag_polls", "dr_tags requests sent for partitions whose entries waited "
            "a second without a newer tag"),
    counter("dr_replays", "journal entries replayed at a promoted DR site, by outcome",
            labels=("outcome",), initial=(("applied",), ("refused_newer",),
                                          ("refused_window_closed",), ("failed",))),
    counter("dr_failovers", "times this client moved to the promoted DR site because its "
            "primary could not be reached"),
))

#: The DR follower's (``dds-admin dr attach`` / ``dr follow --metrics-port``).
DR_FOLLOWER = Catalogue("dds_dr_follower", (
    counter("rows", "rows of the primary's change stream applied at the DR site (every "
            "DR replica they route to acknowledged them)"),
    counter("pages", "change stream pages applied at the DR site"),
    counter("requests", "dr_apply requests sent (each one transaction at a DR brick; the "
            "pages of several partitions share one when they meet)"),
    counter("errors", "failed reads of the primary's change stream and failed dr_apply "
            "requests, by error code (each is retried)", labels=("code",)),
    counter("exclusions_requested", "unreachable DR bricks the follower asked their "
            "group to exclude"),
    gauge("lag_seconds", "seconds between now and the safe time of what the DR site "
          "holds of each primary partition", labels=("partition",)),
    gauge("partitions", "primary partitions followed"),
))
