"""The copy's receiving side reads its replies as checked types (``dds.replies``): a
source answering in the wrong shape fails the pull with an error naming the request, the
source and the field (the caller starts over), not a ``KeyError`` in the middle of it."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dds.messages import CopyBegin, CopyDelta, Message

from dds.bricks.copy.pull import Pull, PullFailed

SNAP = {"pid": "p1.0", "size": 10, "lsn": 3, "checksum": 7}


class Source:
    """A peer connection answering each request type with the reply given."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.sent: list[Message] = []

    async def send(self, msg: Message, timeout: float | None = None) -> Any:
        self.sent.append(msg)
        return self.replies[msg.TYPE]


def pull(tmp_path: Path, source: Source) -> Pull:
    async def peer(brick: str) -> Source:
        assert brick == "b2"
        return source
    ctx = types.SimpleNamespace(id="b1", peer=peer, storage=None, participant=None,
                                clock=Clock(), fsyncs=False)
    return Pull(ctx, "b2", tmp_path)  # type: ignore[arg-type]


def run(aw: Any) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(aw).addBoth(out.append)
    assert out, "did not finish"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_copy_begin_sends_the_typed_request_and_reads_its_snapshots(tmp_path: Path) -> None:
    source = Source({"copy_begin": {"session": 4, "record": [], "snapshots": [SNAP]}})
    p = pull(tmp_path, source)
    reply = run(p.begin(CopyBegin(rg="rg1", target="b1")))
    assert source.sent == [CopyBegin(rg="rg1", target="b1")]
    assert (p.session, p.snapshots, p.bytes_total) == (4, [SNAP], 10)
    assert reply.stream is None and p.stream_port is None


def test_a_copy_begin_reply_without_snapshots_fails_the_pull_naming_it(
        tmp_path: Path) -> None:
    p = pull(tmp_path, Source({"copy_begin": {"session": 4, "record": []}}))
    with pytest.raises(PullFailed, match="copy_begin to b2: malformed partition copy "
                                         r"\(begin\) reply: no 'snapshots'"):
        run(p.begin(CopyBegin(rg="rg1", target="b1")))


def test_a_delta_row_without_its_log_position_fails_the_pull(tmp_path: Path) -> None:
    source = Source({"copy_begin": {"session": 4, "record": [], "snapshots": [SNAP]},
                     "copy_delta": {"rows": [[b"k", b"v", 2]], "more": False}})
    p = pull(tmp_path, source)
    run(p.begin(CopyBegin(rg="rg1", target="b1")))
    p.after["p1.0"] = 3
    with pytest.raises(PullFailed, match="copy_delta to b2: malformed .* rows"):
        run(p.delta())
    assert source.sent[-1] == CopyDelta(session=4, pid="p1.0", after_lsn=3, limit=1000)


def test_a_request_before_copy_begin_is_refused_before_anything_is_sent(
        tmp_path: Path) -> None:
    source = Source({})
    p = pull(tmp_path, source)
    with pytest.raises(PullFailed, match="no copy session with b2"):
        run(p.fence())
    assert source.sent == []
