"""Request bodies of the wire protocol, as small validated attrs classes (DESIGN §10).

Each request type has a class, declared once for both ends: the sender builds it and
sends it (``RPCProtocol.send``, which puts ``to_wire``'s body in the frame); the receiver's
``decode_request(type, body)`` builds it back from a decoded frame and turns every shape
or type problem into ``InvalidRequest`` naming the field, so a handler only ever sees
well-formed requests.  Replies are plain dicts documented on each class; those read
across modules have a checked type in ``dds.replies``.

The classes live by subsystem, all re-exported here (``from dds.messages import X`` is
the one way to import them): ``base`` (the ``Message`` base and its registry, roles,
validators, decoding), ``data`` (reads and the 2PC of a write), ``membership`` (the map
and gossip, leases, RG record changes), ``admin``, ``copy`` (recovery by partition copy)
and ``reorg`` (journal, range checks, moves, split and merge).
"""

from __future__ import annotations

from dds.messages.base import (ADMIN_ONLY, ANY_ROLE, GET_COMPACT, MAX_PARTICIPANTS, Message,
                               OPS, Op, PEERS, RGRef, STAFF, TxnId, decode_request,
                               encode_request, roles_of, title, _REGISTRY, _bytes, _opt_bytes,
                               _pair, _participants, _session, _str, _u32, _u64)
from dds.messages.data import (Abort, BoundedGet, Commit, GET_COMPACT_FIELDS, Get, Prepare)
from dds.messages.membership import (Gossip, Lease, MapGet, MapPush, RGChange, RecordDecide,
                                     RecordPrepare, RecordState)
from dds.messages.admin import (Checksum, Failpoint, Ping, Resolve, RestoreQuarantined, Status,
                                TxnState, Txns)
from dds.messages.copy import (CopyBegin, CopyCancel, CopyChunk, CopyDelta, CopyFence,
                               RGStatus, Readmit, Recover)
from dds.messages.reorg import (JournalRead, JournalWrite, MoveFinish, MovePull, RGUpdate,
                                RangeChecksums, RangeKeys, RowRead, SplitAbort, SplitCutover,
                                SplitFence, SplitFinish, SplitPrepare, SplitRelease,
                                SplitStatus)

__all__ = ["ADMIN_ONLY", "ANY_ROLE", "Abort", "BoundedGet", "Checksum", "Commit", "CopyBegin",
           "CopyCancel", "CopyChunk", "CopyDelta", "CopyFence", "Failpoint", "GET_COMPACT",
           "GET_COMPACT_FIELDS", "Get", "Gossip", "JournalRead", "JournalWrite", "Lease",
           "MAX_PARTICIPANTS", "MapGet", "MapPush", "Message", "MoveFinish", "MovePull", "OPS",
           "Op", "PEERS", "Ping", "Prepare", "RGChange", "RGRef", "RGStatus", "RGUpdate",
           "RangeChecksums", "RangeKeys", "Readmit", "RecordDecide", "RecordPrepare",
           "RecordState", "Recover", "Resolve", "RestoreQuarantined", "RowRead", "STAFF",
           "SplitAbort", "SplitCutover", "SplitFence", "SplitFinish", "SplitPrepare",
           "SplitRelease", "SplitStatus", "Status", "TxnId", "TxnState", "Txns",
           "decode_request", "encode_request", "roles_of", "title"]
