"""Failpoints: named places in the code where a test can crash, stop or slow the process.

A failpoint is one of a fixed set of names (:data:`KNOWN`).  Each hook in the code reads::

    if failpoints.ARMED:
        failpoints.fire("commit.after_apply_before_ack")

``ARMED`` is a module-level bool that is False unless at least one failpoint is armed, so
with nothing armed a hook costs one global lookup, one attribute load and one branch (see
``docs/failpoints.md`` for the measured figure).  Nothing else runs.

Actions (the text after ``=``):

``crash``
    ``os._exit(CRASH_EXIT_CODE)`` at once: no cleanup, no flush, no ``finally`` blocks and
    no reactor shutdown, the same as ``kill -9`` at exactly that point.
``pause``
    ``SIGSTOP`` to the process itself; it resumes where it stopped when someone sends it
    ``SIGCONT`` (the test does).
``sleep:SECONDS``
    ``time.sleep`` on the calling thread.  Called from the reactor thread, it blocks the
    reactor: a model of a long GC pause or a swapped-out process that still holds its
    sockets open.
``error``
    raise :class:`~dds.errors.InternalError` naming the failpoint; a brick answers the
    request with that error.
``count:N:ACTION``
    pass the first N-1 hits, perform ACTION on the N-th, and disarm.

Ways to arm, all equivalent:

* the environment variable ``DDS_FAILPOINTS="name=action;name2=action"``, read once when
  this module is first imported (so at process start).  A bad entry raises
  :class:`FailpointError` naming it, which fails the import and therefore the start;
* :func:`arm`, :func:`disarm`, :func:`clear` from Python (tests in one process);
* for bricks, the ``failpoint`` admin request ``{"name": ..., "action": ... | None}``
  (authenticated like every request; ``None`` disarms).

The registry is per process: in a simulation that runs several bricks in one process, an
armed failpoint fires in whichever brick reaches it first (``count:N`` picks one hit).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Mapping

import attrs

from dds.errors import ConfigError, InternalError

__all__ = ["ARMED", "CRASH_EXIT_CODE", "ENV_VAR", "KNOWN", "Action", "FailpointError",
           "arm", "armed", "check_name", "clear", "disarm", "fire", "hits", "is_armed",
           "load_env",
           "parse_action", "parse_spec"]

#: Exit status of a process stopped by a ``crash`` failpoint.
CRASH_EXIT_CODE = 86

#: The environment variable read at import.
ENV_VAR = "DDS_FAILPOINTS"

#: Every failpoint, with where it is.  A name not listed here is refused.
KNOWN: Mapping[str, str] = {
    "prepare.before_vote":
        "brick: a PREPARE arrived; nothing is locked or staged yet",
    "prepare.after_vote":
        "brick: the key is locked and the write staged (vote YES), the reply not yet sent",
    "commit.before_apply":
        "brick: a COMMIT for a prepared transaction arrived; nothing applied yet",
    "commit.after_apply_before_ack":
        "brick: the commit is durable and the lock released, the ack not yet sent",
    "coordinator.after_prepare":
        "library: every PREPARE answered (or failed); no decision taken yet",
    "coordinator.after_decision":
        "library: commit or abort decided; no COMMIT or ABORT sent yet",
    "coordinator.between_commits":
        "library: the first member acknowledged COMMIT; the others not yet sent it",
    "copy.mid":
        "brick (recovery source): the chunk holding the middle of a snapshot is asked for",
    "recovery.after_fence":
        "brick (recovering): the source fenced writes for the last delta; nothing pulled",
    **{f"move.after_{step}": f"dds-admin move: step {step!r} is done and journaled"
       for step in ("incoming", "copied", "fenced", "delta", "cutover-out", "cutover-in",
                    "released", "dropped")},
    **{f"{kind}.after_{step}": f"dds-admin {kind}: step {step!r} is done and journaled"
       for kind in ("split", "merge")
       for step in ("incoming", "prepared", "fenced", "delta", "cutover", "released")},
    **{f"membership.after_{step}": f"dds-admin add-brick/remove-brick/rebalance: step "
       f"{step!r} (of a change) is done and journaled"
       for step in ("registered", "added", "active", "removed")},
}

#: True while at least one failpoint is armed; hooks test this and nothing else.
ARMED = False

_SIMPLE = ("crash", "pause", "error")


class FailpointError(ConfigError):
    """A failpoint name or action that cannot be used; the message names it."""


@attrs.frozen
class Action:
    """A parsed action: ``kind`` is crash, pause, sleep or error; ``on_hit`` is the one
    hit that triggers it (``count:N:``), 0 for every hit."""

    kind: str
    seconds: float = 0.0
    on_hit: int = 0

    def __str__(self) -> str:
        base = f"sleep:{self.seconds:g}" if self.kind == "sleep" else self.kind
        return f"count:{self.on_hit}:{base}" if self.on_hit else base


def _known_names() -> str:
    return ", ".join(KNOWN)


def check_name(name: str) -> str:
    if name not in KNOWN:
        raise FailpointError(f"unknown failpoint {name!r}; known: {_known_names()}")
    return name


def parse_action(text: str) -> Action:
    """Parse ``crash``, ``pause``, ``error``, ``sleep:SECONDS`` or ``count:N:ACTION``."""
    text = text.strip()
    if text.startswith("count:"):
        _, n_text, rest = (text.split(":", 2) + ["", ""])[:3]
        try:
            on_hit = int(n_text)
        except ValueError:
            on_hit = 0
        if on_hit < 1 or not rest:
            raise FailpointError(f"bad action {text!r}: expected count:N:ACTION with N >= 1")
        if rest.startswith("count:"):
            raise FailpointError(f"bad action {text!r}: count:N cannot be nested")
        inner = parse_action(rest)
        return attrs.evolve(inner, on_hit=on_hit)
    if text in _SIMPLE:
        return Action(text)
    if text.startswith("sleep:"):
        try:
            seconds = float(text[len("sleep:"):])
        except ValueError:
            seconds = -1.0
        if not (0 <= seconds < 3600):
            raise FailpointError(f"bad action {text!r}: expected sleep:SECONDS with "
                                 "0 <= SECONDS < 3600")
        return Action("sleep", seconds)
    raise FailpointError(f"bad action {text!r}; expected crash, pause, error, "
                         "sleep:SECONDS or count:N:ACTION")


def parse_spec(spec: str) -> dict[str, Action]:
    """Parse ``"name=action;name2=action"`` (empty entries and spaces are ignored)."""
    out: dict[str, Action] = {}
    for entry in spec.split(";"):
        if not entry.strip():
            continue
        name, sep, action = entry.partition("=")
        name = name.strip()
        try:
            if not sep:
                raise FailpointError("expected NAME=ACTION")
            if name in out:
                raise FailpointError(f"failpoint {name!r} given twice")
            out[check_name(name)] = parse_action(action)
        except FailpointError as e:
            raise FailpointError(f"{ENV_VAR}: entry {entry.strip()!r}: {e.message}") from None
    return out


# -- the registry --------------------------------------------------------------------------

_armed: dict[str, Action] = {}
_hits: dict[str, int] = {}


def _update() -> None:
    global ARMED
    ARMED = bool(_armed)


def arm(name: str, action: str | Action) -> Action:
    """Arm ``name`` (replacing what was armed there); the hit count starts again."""
    check_name(name)
    parsed = parse_action(action) if isinstance(action, str) else action
    _armed[name] = parsed
    _hits[name] = 0
    _update()
    return parsed


def disarm(name: str) -> None:
    """Disarm ``name``; disarming one that is not armed is fine."""
    check_name(name)
    _armed.pop(name, None)
    _update()


def clear() -> None:
    """Disarm every failpoint and forget the hit counts."""
    _armed.clear()
    _hits.clear()
    _update()


def armed() -> dict[str, str]:
    """The armed failpoints and their actions, as text."""
    return {name: str(action) for name, action in _armed.items()}


def is_armed(name: str) -> bool:
    return name in _armed


def hits(name: str) -> int:
    """How many times ``name`` was reached while armed."""
    return _hits.get(name, 0)


def fire(name: str) -> None:
    """Called by a hook when ``ARMED``: perform ``name``'s action if it is due."""
    action = _armed.get(name)
    if action is None:
        return
    count = _hits[name] = _hits.get(name, 0) + 1
    if action.on_hit:              # count:N fires once, on the N-th hit, then disarms
        if count < action.on_hit:
            return
        del _armed[name]
        _update()
    _say(f"failpoint {name}: {action.kind}")
    if action.kind == "crash":
        os._exit(CRASH_EXIT_CODE)
    if action.kind == "pause":
        os.kill(os.getpid(), signal.SIGSTOP)
        _say(f"failpoint {name}: resumed")
    elif action.kind == "sleep":
        time.sleep(action.seconds)
    elif action.kind == "error":
        raise InternalError(f"failpoint {name}")


def _say(line: str) -> None:
    """One unbuffered line on stderr: it is written even if the next step is _exit."""
    try:
        os.write(sys.stderr.fileno(), f"[pid {os.getpid()}] {line}\n".encode())
    except (OSError, ValueError, AttributeError):
        pass


def load_env(environ: Mapping[str, str] = os.environ) -> dict[str, Action]:
    """Arm what ``DDS_FAILPOINTS`` names; raises ``FailpointError`` on a bad entry."""
    parsed = parse_spec(environ.get(ENV_VAR, ""))
    for name, action in parsed.items():
        arm(name, action)
    if parsed:
        _say(f"failpoints armed from {ENV_VAR}: " +
             "; ".join(f"{n}={a}" for n, a in parsed.items()))
    return parsed


load_env()
