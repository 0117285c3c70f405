"""``RPCProtocol.send(msg)``: a typed request goes out as the frame the hand-built body
made (a peer of the previous version reads it as before), and the receiver decodes it
back into an equal message."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from dds.messages import CopyDelta, JournalWrite, Message, RGChange, decode_request
from dds.rpc import RPCProtocol
from tests.protocol.test_rpc import Server, connect
from tests.sim.network import Connection, MemoryNetwork


@pytest.fixture
def net() -> MemoryNetwork:
    return MemoryNetwork(Clock())


def _request_bytes(net: MemoryNetwork, send: Any) -> bytes:
    """The bytes the server receives for one request made by ``send(conn)`` on a new
    connection (request id 1 on each, so two such requests can be compared)."""
    conn: RPCProtocol = net.run(connect(net))
    received: list[bytes] = []

    def tap(c: Connection, to: int, data: bytes) -> None:
        if c.protos[to] is not conn:          # the server's side
            received.append(data)
    net.taps.append(tap)
    try:
        net.run(send(conn))
    finally:
        net.taps.remove(tap)
        conn.close()
    return b"".join(received)


CASES: list[tuple[str, dict[str, Any], Message]] = [
    # As the pull asks (``DELTA_ROWS``).
    ("copy_delta", {"session": 9, "pid": "0/2", "after_lsn": 17, "limit": 1000},
     CopyDelta(session=9, pid="0/2", after_lsn=17, limit=1000)),
    ("rg_change", {"rg": "rg2", "version": 4, "fp": 12345, "member": "b3",
                   "state": "excluded", "reason": "unreachable"},
     RGChange(rg="rg2", version=4, fp=12345, member="b3", state="excluded",
              reason="unreachable")),
    ("journal_write", {"job": "move-1", "step": {"name": "copied"}},
     JournalWrite(job="move-1", step={"name": "copied"})),
]


@pytest.mark.parametrize("mtype,body,msg", CASES, ids=[c[0] for c in CASES])
def test_a_typed_send_puts_the_hand_built_frame_on_the_wire(
        net: MemoryNetwork, mtype: str, body: dict[str, Any], msg: Message) -> None:
    Server(net)
    before = _request_bytes(net, lambda conn: conn.call(mtype, body, timeout=5.0))
    after = _request_bytes(net, lambda conn: conn.send(msg, timeout=5.0))
    assert before and after == before


@pytest.mark.parametrize("mtype,body,msg", CASES, ids=[c[0] for c in CASES])
def test_the_receiver_decodes_a_typed_send_into_an_equal_message(
        net: MemoryNetwork, mtype: str, body: dict[str, Any], msg: Message) -> None:
    server = Server(net)
    conn: RPCProtocol = net.run(connect(net))
    reply = net.run(conn.send(msg, timeout=5.0))
    [(got_type, got_body)] = server.calls
    assert got_type == msg.TYPE
    assert decode_request(got_type, got_body) == msg
    assert reply == {"echo": got_body}
