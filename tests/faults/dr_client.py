"""One client process of the DR fault run (``tests/faults/dr.py``): a ``DDSClient`` of the
primary with the DR site configured (``dr_failover="auto"``, a journal file), writing
until SIGTERM, every write recorded.

``python -m tests.faults.dr_client CONFIG.json`` with ``{"process", "seeds", "secret",
"site_seeds", "site_secret" (hex), "keys", "out", "journal", "seed"}``.

Before it fails over it writes the keys ``o000``…; after (its library moved to the
promoted DR site by itself), fresh keys ``n000``…, so that the old keys keep what the
follower and the replays left them (one write per client may still land on an old key:
the one that found the primary gone, made again at the DR site by the library).

Records (JSON lines, flushed at once, so a SIGKILL loses at most a line being written):
``{"t": "invoke", "op", "key", "ms"}``; ``{"t": "ack", "key", "version", "value", "ms",
"site"}`` (``site``: "primary", or "dr" once failed over); ``{"t": "fail", "key",
"code"}``; ``{"t": "unknown", "key"}`` (Indeterminate); at a clean stop ``{"t":
"report", "failed_over", "replay": {counts}, "journal": entries left}``.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from dds.errors import DDSError, Indeterminate
from dds.lib import DDSClient

#: Pause after a failed write: a dead primary answers at once.
FAILED_PAUSE_S = 0.05


def old_key(i: int) -> bytes:
    return b"o%03d" % i


def new_key(i: int) -> bytes:
    return b"n%03d" % i


class Writer:
    def __init__(self, cfg: dict[str, Any], out: TextIO) -> None:
        self.cfg = cfg
        self.out = out
        self.rng = random.Random(cfg["seed"])
        self.stop = False

    def stop_soon(self, *_: Any) -> None:
        """SIGTERM: finish the write under way, report, exit."""
        self.stop = True

    def record(self, **fields: Any) -> None:
        self.out.write(json.dumps(fields) + "\n")
        self.out.flush()

    async def run(self, reactor: Any) -> None:
        cfg = self.cfg
        client = await DDSClient.connect(
            reactor, cfg["seeds"], cluster="dds", secret=bytes.fromhex(cfg["secret"]),
            timeout=5.0, metrics_registry=None, dr_journal_path=cfg["journal"],
            dr_site={"seeds": cfg["site_seeds"], "cluster": "dds",
                     "secret": bytes.fromhex(cfg["site_secret"])})
        # Here, not before the reactor runs: it installs its own SIGTERM handler (stop).
        signal.signal(signal.SIGTERM, self.stop_soon)
        self.record(t="started", ms=int(time.time() * 1000))
        n = 0
        try:
            while not self.stop:
                n += 1
                moved = client.dr.failed_over is not None
                key = (new_key if moved else old_key)(self.rng.randrange(cfg["keys"]))
                remove = self.rng.random() < 0.1
                value = None if remove else f"c{cfg['process']}.{n}".encode()
                self.record(t="invoke", op="remove" if remove else "put", key=key.hex(),
                            ms=int(time.time() * 1000))
                try:
                    if remove:
                        version = await client.remove(key)
                    else:
                        assert value is not None
                        version = await client.put(key, value)
                except Indeterminate:
                    self.record(t="unknown", key=key.hex())
                    await deferLater(reactor, FAILED_PAUSE_S, lambda: None)
                    continue
                except DDSError as e:
                    self.record(t="fail", key=key.hex(), code=e.code)
                    await deferLater(reactor, FAILED_PAUSE_S, lambda: None)
                    continue
                self.record(t="ack", key=key.hex(), version=version,
                            value=None if value is None else value.hex(),
                            ms=int(time.time() * 1000),
                            site="dr" if client.dr.failed_over is not None else "primary")
            report = client.dr.last_report
            self.record(t="report", failed_over=client.dr.failed_over is not None,
                        replay=None if report is None else {
                            "applied": len(report.applied),
                            "refused_newer": len(report.refused_newer),
                            "refused_window_closed": len(report.refused_window_closed),
                            "failed": len(report.failed)},
                        journal=len(client.dr_journal))
        finally:
            await client.close()


def main(reactor: Any, path: str) -> Deferred[None]:
    with open(path) as f:
        cfg = json.load(f)
    out = open(cfg["out"], "a", buffering=1)
    return Deferred.fromCoroutine(Writer(cfg, out).run(reactor))


if __name__ == "__main__":
    react(main, [sys.argv[1]])
