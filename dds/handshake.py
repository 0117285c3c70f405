"""The handshake of an RPC connection (DESIGN §10): a state machine proving the
connecting side's **role** (``brick``, ``admin`` or ``client``, ``dds.auth``):

    client → HELLO0 {proto}                    (plain text only: the client speaks first)
    server → HELLO  {proto, cluster, node, nonce_s}
    client → HELLO2 {proto, cluster, node, role, nonce_c,
                     mac = HMAC(secret[role], "c" nonce_s nonce_c …)}
    server → HELLO3 {mac = HMAC(secret[role], "s" nonce_c nonce_s …)}

With shared secrets, each role has its own secret: a brick holds all three and checks the
MAC with the secret of the role claimed, so a client's secret proves nothing but "client".
With mutual TLS (``dds.tls``) the same messages run inside the TLS session without MACs,
and the role, id and cluster are read from the peer's certificate, never from its claims.
A wrong secret, cluster name or protocol version ends the connection with an error that
names the problem; failures are counted in metrics and logged at a bounded rate
(``dds.ratelimit``), and the id a peer claims is never logged before it is proven.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from twisted.python.failure import Failure

from dds.auth import ROLES, Credentials
from dds.errors import AuthenticationFailed, DDSError, ProtocolError, Timeout, from_wire

from dds.rpcframing import FramedConnection, State

PROTOCOL_VERSION = 2

HANDSHAKE_TIMEOUT_S = 10.0
#: What this side announces in its handshake message: batch frames, and the compact
#: ``g`` read (``dds.messages.GET_COMPACT``).
FEATURES = ("batch", "g")


def _mac(secret: bytes, tag: bytes, *parts: bytes) -> bytes:
    h = hmac.new(secret, tag, hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()


class Handshaking(FramedConnection):
    """The handshake of ``RPCProtocol`` (which sets these attributes up and sends the
    opening message in ``connectionMade``)."""

    node_id: str
    cluster: str
    credentials: Credentials
    peer_role: str | None
    peer_features: frozenset[str]
    _claimed_id: str
    _nonce: bytes
    _peer_nonce: bytes
    _hs_timer: Any
    _handshake_timeout: float

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        self._fail_handshake(Timeout("handshake did not complete in "
                                     f"{self._handshake_timeout:g}s"))

    def _handshake(self, mtype: str, body: Any) -> None:
        try:
            if mtype == "err":
                raise from_wire(body)
            if not isinstance(body, dict):
                raise ProtocolError(f"malformed handshake message {mtype!r:.20}")
            if self.state is State.AWAIT_HELLO2 and mtype == "hello0":
                return      # a plain-text client's opening word (see connectionMade)
            if self.state is State.AWAIT_HELLO and mtype == "hello":
                self._check_peer(body)
                self._peer_nonce = _nonce(body)
                role = self.credentials.role
                hello2 = {"proto": PROTOCOL_VERSION, "cluster": self.cluster,
                          "node": self.node_id, "role": role, "nonce": self._nonce,
                          "features": list(FEATURES)}
                if self.credentials.tls is None:
                    hello2["mac"] = self._proof(b"c", self._peer_nonce, self._nonce, role)
                self._send("hello2", 0, hello2)
                self.state = State.AWAIT_HELLO3
            elif self.state is State.AWAIT_HELLO2 and mtype == "hello2":
                self._check_peer(body)
                self._peer_nonce = _nonce(body)
                claimed = body.get("role")
                if not isinstance(claimed, str) or claimed not in ROLES:
                    raise ProtocolError(f"handshake: unknown role {claimed!r:.20} (expected "
                                        f"one of {', '.join(ROLES)})")
                role = claimed
                hello3: dict[str, Any] = {}
                if self.credentials.tls is None:
                    secret = self.credentials.secret(role)
                    expected = self._proof(b"c", self._nonce, self._peer_nonce, role)
                    if secret is None or not hmac.compare_digest(expected,
                                                                 _bytes(body.get("mac"))):
                        raise AuthenticationFailed(
                            f"authentication as {role} failed: wrong shared secret for "
                            f"the {role} role")
                    hello3["mac"] = self._proof(b"s", self._peer_nonce, self._nonce, role)
                else:
                    self._claimed_id = self._certified(role)
                self._send("hello3", 0, hello3)
                self._become_ready(role)
            elif self.state is State.AWAIT_HELLO3 and mtype == "hello3":
                role = self.credentials.role
                if self.credentials.tls is None:
                    expected = self._proof(b"s", self._nonce, self._peer_nonce, role)
                    if not hmac.compare_digest(expected, _bytes(body.get("mac"))):
                        raise AuthenticationFailed(
                            f"the brick at {self._address()} failed authentication: it "
                            f"does not hold this cluster's {role} secret")
                else:
                    self._claimed_id = self._certified("brick")
                self._become_ready(role)
            else:
                raise ProtocolError(f"unexpected {mtype!r:.20} during handshake "
                                    f"({self.state.value})")
        except DDSError as e:
            self._fail_handshake(e)

    def _certified(self, role: str) -> str:
        """TLS mode: the peer's id from its certificate, which must name this cluster
        and ``role`` (a server checks the role claimed; a client expects a brick)."""
        from dds.tls import peer_identity
        ident = peer_identity(self.transport)
        if ident.cluster != self.cluster:
            raise AuthenticationFailed(f"certificate of {self._address()} names cluster "
                                       f"{ident.cluster!r:.64}, not {self.cluster!r}")
        if ident.role != role:
            raise AuthenticationFailed(f"certificate of {self._address()} is for role "
                                       f"{ident.role!r}, not {role!r}")
        return ident.id

    def _proof(self, tag: bytes, nonce_s: bytes, nonce_c: bytes, role: str) -> bytes:
        client, server = ((self.node_id, self._claimed_id) if self.is_client
                          else (self._claimed_id, self.node_id))
        secret = self.credentials.secret(role) or b""
        return _mac(secret, tag, nonce_s, nonce_c, self.cluster.encode(), role.encode(),
                    client.encode(), server.encode())

    def _check_peer(self, body: dict[str, Any]) -> None:
        if body.get("proto") != PROTOCOL_VERSION:
            raise AuthenticationFailed(f"protocol version {body.get('proto')!r:.20} not "
                                       f"supported (this side speaks {PROTOCOL_VERSION})")
        if body.get("cluster") != self.cluster:
            raise AuthenticationFailed(f"peer belongs to cluster {body.get('cluster')!r:.64},"
                                       f" not {self.cluster!r}")
        node = body.get("node")
        if not isinstance(node, str) or not node or len(node) > 128:
            raise ProtocolError("handshake: missing or bad node id")
        self._claimed_id = node
        # A peer that announces nothing (an older version) gets one frame per message.
        features = body.get("features")
        if isinstance(features, list):
            self.peer_features = frozenset(f for f in features if isinstance(f, str))
        self._peer_batches = "batch" in self.peer_features

    def _become_ready(self, role: str) -> None:
        self.state = State.READY
        self.peer_id = self._claimed_id
        self.peer_role = role
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        self.ready.callback(self)

    def _count_failure(self, error: DDSError) -> None:
        self.metrics.inc("handshake_failures_total")
        if isinstance(error, AuthenticationFailed):
            self.metrics.inc("auth_failures_total")
        self._log_limited.warn("handshake with {peer} failed: {error}",
                               peer=self._address(), error=error.message)

    def _fail_handshake(self, error: DDSError) -> None:
        self._count_failure(error)
        if self.transport is not None and self.state is not State.CLOSED:
            if not (self.is_client and isinstance(error, AuthenticationFailed)
                    and self.state is State.AWAIT_HELLO3):
                self._send("err", 0, error.to_wire())
        self._abort(error)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else b""


def _tls_problem(reason: Failure) -> AuthenticationFailed | None:
    """A TLS failure as an error that says what went wrong, or None for anything else."""
    import ssl
    if not reason.check(ssl.SSLError):
        return None
    raw = str(reason.value)
    text = raw.lower()
    hint = ""
    if "wrong version number" in text or "packet length too long" in text \
            or "record layer failure" in text or "http request" in text:
        hint = " (the other side does not speak TLS: is auth.mode \"tls\" on both sides?)"
    elif "certificate verify failed" in text or "unknown ca" in text \
            or "bad certificate" in text or "certificate required" in text \
            or "expired" in text:
        hint = " (the certificate is not from this cluster's CA, expired, or missing)"
    return AuthenticationFailed(f"TLS handshake failed: {raw:.200}{hint}")


def _nonce(body: dict[str, Any]) -> bytes:
    n = body.get("nonce")
    if not isinstance(n, bytes) or len(n) != 16:
        raise ProtocolError("handshake: missing or bad nonce")
    return n


__all__ = ["FEATURES", "HANDSHAKE_TIMEOUT_S", "Handshaking", "PROTOCOL_VERSION"]
