"""Error types shared by bricks, the library and the admin tool.

Every error that can cross the wire has a stable ``code``; the receiving side rebuilds the
same class from it (:func:`from_wire`), so a library sees ``Locked`` or ``StaleMap`` exactly
as the brick raised it.  ``data`` carries structured detail (for ``StaleMap``: the brick's
own RG record, so the library can repair its map without another round trip).
"""

from __future__ import annotations

from typing import Any


class DDSError(Exception):
    """Base of every error DDS reports on purpose."""

    code = "error"
    #: Whether an operation that failed with this error may simply be retried.
    retryable = False

    def __init__(self, message: str = "", data: Any = None) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.data = data

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.message, "data": self.data}

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.message!r})"


# -- outcomes of data operations ----------------------------------------------------------

class StaleMap(DDSError):
    """The map (version, fingerprint) the caller routed by is not the brick's."""

    code = "stale_map"
    retryable = True


class Divergence(StaleMap):
    """Same record version, different fingerprint: needs ``dds-admin repair``."""

    code = "divergence"


class Locked(DDSError):
    """The key is locked by an older transaction (wait-die: the younger one dies)."""

    code = "locked"
    retryable = True


class Exists(DDSError):
    """``create`` of a key that already has a value."""

    code = "exists"


class VersionMismatch(DDSError):
    """``compare_and_put`` whose expected version is not the key's current version."""

    code = "version_mismatch"


class NotServing(DDSError):
    """The brick does not serve this partition now (not a member, no lease, recovering)."""

    code = "not_serving"
    retryable = True


class Recovering(NotServing):
    """Writes to the partition are fenced while a replica re-syncs."""

    code = "recovering"


class NotPrimary(DDSError):
    """A write sent to a disaster-recovery site that follows a primary (DESIGN §12):
    writes go to the primary until ``dds-admin dr promote``.  Nothing was applied."""

    code = "not_primary"


class ReplayWindow(DDSError):
    """A new write sent to a site just promoted, while its replay window is open
    (DESIGN §12: replays come first).  Nothing was applied; the library retries it until
    the window closes or its deadline passes."""

    code = "replay_window"
    retryable = True


class ReplayRefused(DDSError):
    """A journal replay the promoted site does not apply (DESIGN §12): its copy of the key
    is at the replayed version or newer, the replay window is closed, or the site was not
    promoted.  ``data``: ``{"version": the site's version, "reason": "newer" |
    "window_closed" | "not_promoted"}``.  Nothing was applied; the library reports it."""

    code = "replay_refused"


class JournalFull(DDSError):
    """A write refused by the library before its PREPARE was sent: the client's DR
    journal (``lib/drjournal.py``) holds as many acknowledged writes not yet at the DR
    site as it may (``dr_journal_max_entries`` / ``dr_journal_max_bytes``).  With
    ``dr_journal_when_full="wait"`` the write waited for room until its deadline first.
    Nothing was applied anywhere; retry once the DR site has caught up."""

    code = "journal_full"
    retryable = True


class Refused(DDSError):
    """A change of an RG record was refused: the suspect answers, another change holds the
    record's lock, the record moved on, or too few members voted (DESIGN §5)."""

    code = "refused"
    retryable = True


class UnknownTransaction(DDSError):
    """COMMIT or ABORT for a transaction the brick never prepared (or already forgot)."""

    code = "unknown_txn"


class Indeterminate(DDSError):
    """The write may or may not have happened: its outcome could not be learned in time."""

    code = "indeterminate"


class Timeout(DDSError):
    """An operation or request did not complete within its deadline."""

    code = "timeout"
    retryable = True


class Unavailable(DDSError):
    """No replica of the partition could be reached."""

    code = "unavailable"
    retryable = True


class ReplicaDamaged(DDSError):
    """This replica cannot serve the key: the stored value failed its checksum, or the
    partition's file could not be read.  The brick never returns damaged bytes; it repairs
    the replica from its RG by itself.  A read may be retried on another replica (the
    library does so); for a write nothing was applied."""

    code = "replica_damaged"
    retryable = True


class StorageFull(DDSError):
    """The brick cannot stage the write: its disk (or the filesystem of its data directory)
    is full.  Nothing was applied; the brick steps out of the write path until space
    returns, so a retry reaches an RG without it."""

    code = "storage_full"
    retryable = True


# -- bad input ---------------------------------------------------------------------------

class InvalidRequest(DDSError):
    """A request that is malformed or breaks a limit; nothing was applied."""

    code = "invalid"


class KeyTooLarge(InvalidRequest):
    code = "key_too_large"


class ValueTooLarge(InvalidRequest):
    code = "value_too_large"


class ProtocolError(DDSError):
    """A peer broke the wire protocol (bad frame, unknown type, oversize frame)."""

    code = "protocol"


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeds the configured maximum."""

    code = "frame_too_large"


class AuthenticationFailed(DDSError):
    """The handshake failed: wrong shared secret, cluster name or protocol version."""

    code = "auth"


class PermissionDenied(DDSError):
    """The request is outside the role the connection authenticated as (DESIGN §10): a
    client asked for an admin or peer operation, say.  Nothing was applied."""

    code = "permission_denied"


class ConfigError(DDSError):
    """A configuration file or setting is invalid; the message names the setting."""

    code = "config"


class ConnectionLost(DDSError):
    """The connection to a peer closed before its answer arrived."""

    code = "connection_lost"
    retryable = True


class InternalError(DDSError):
    """The peer failed unexpectedly while handling the request (it logged the cause)."""

    code = "internal"


def _all_subclasses(cls: type[DDSError]) -> list[type[DDSError]]:
    out: list[type[DDSError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_ERROR_CLASSES: list[type[DDSError]] = [DDSError, *_all_subclasses(DDSError)]
_BY_CODE: dict[str, type[DDSError]] = {c.code: c for c in _ERROR_CLASSES}


def from_wire(body: Any) -> DDSError:
    """Rebuild an error sent by a peer; an unknown or malformed one becomes ``DDSError``."""
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error body: {body!r:.80}")
    code = body.get("code")
    cls = _BY_CODE.get(code, DDSError) if isinstance(code, str) else DDSError
    msg = body.get("msg")
    return cls(msg if isinstance(msg, str) else "", body.get("data"))
