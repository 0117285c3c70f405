"""Brick processes and ``dds-admin`` commands forked from a pre-warmed interpreter (the
harness's "zygote").

A brick start costs about a second of CPU, two thirds of it importing Twisted,
cryptography, pyOpenSSL, prometheus_client and the like, and the suite starts hundreds of
bricks; a ``dds-admin`` command costs about 0.8 s before it does anything, for the same
reason, and the suite runs a few hundred of those too.  The zygote is one helper process
per test process that imports those third-party libraries once, then forks a child for
each brick start or admin command.  The child then does what ``python -m MODULE ARGS``
(``dds.bricks.main`` or ``dds.tools.admin``), ``python SCRIPT ARGS`` (the installed
``dds-admin`` script) or ``python -c CODE ARGS`` (a test's client or coordinator program)
does: it runs the module, script or code as ``__main__`` (``runpy``, ``exec``) with
the same ``sys.argv``, environment, working directory, ``sys.path[0]``, stdin from
``/dev/null``, a session of its own, and stdout/stderr appended to the brick's log file
(a brick) or written to files the harness reads back as ``subprocess.run`` with
``capture_output`` would return them (an admin command).  Its exit status is the
interpreter's (``SystemExit`` code, 1 and a traceback for an uncaught exception, ``-N``
when killed by signal N).  No DDS module is ever imported in the zygote (checked when it
starts), so all of the brick's or tool's own code, ``dds.failpoints`` reading
``DDS_FAILPOINTS`` included, runs fresh in each child.  The one thing a child shares with
its siblings is the string hash seed (``PYTHONHASHSEED``), fixed at the zygote's start.

The zygote is used only when the request's environment differs from the zygote's own in
``DDS_*`` variables (and pytest's ``PYTEST_CURRENT_TEST``) at most (anything else, e.g. a
``PYTHON*`` variable, could change how an interpreter starts): otherwise, and with
``DDS_TEST_ZYGOTE=0``, bricks and commands are exec'd as before.  Tests of the daemon's
own start and command line use the exec path (``BrickProcess(..., exec_path=True)``), and
tests of the admin tool's face that send it signals start it themselves.
docs/verification.md says more.

Protocol: the test process writes one JSON request per line on the zygote's stdin
(``argv``, ``run`` (``module`` or ``path``), ``target``, ``sys_argv``, ``cwd``, ``out``,
``err``, ``env``, ``status``) and reads ``{"pid": N}`` from its stdout; when a child
exits, the zygote (its parent, which reaps it) writes its return code to the request's
``status`` file.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

ENV_SWITCH = "DDS_TEST_ZYGOTE"
#: Variables that differ between tests and that no interpreter start reads (pytest names
#: the running test in one).
_IGNORED = frozenset({"PYTEST_CURRENT_TEST"})

#: What the zygote imports before forking: third-party libraries a brick imports at
#: start, never a DDS module, never ``twisted.internet.reactor`` (the child installs its
#: own reactor, as ``dds.bricks.main`` does).
PRELOAD = (
    "argparse", "json", "sqlite3", "tomllib", "hashlib", "hmac", "secrets", "struct",
    "csv", "difflib", "importlib.metadata", "importlib.resources",
    "attr", "attrs", "msgpack", "xxhash", "zope.interface",
    "prometheus_client", "prometheus_client.core", "prometheus_client.parser",
    "OpenSSL.SSL", "OpenSSL.crypto", "cryptography.x509", "service_identity",
    "twisted.logger", "twisted.python.failure", "twisted.internet.defer",
    "twisted.internet.interfaces", "twisted.internet.protocol",
    "twisted.internet.epollreactor", "twisted.internet.endpoints", "twisted.internet.ssl",
    "twisted.internet.task", "twisted.internet.threads", "twisted.application.service",
    "twisted.web.server", "twisted.web.resource", "twisted.web.http",
    "twisted.protocols.basic", "twisted.protocols.policies",
    # dds-admin's command line and output
    "click", "rich", "rich.console", "rich.markup", "rich.table",
)

#: What a child may run: ``python -m`` one of these modules, or an installed script.
MODULES = ("dds.bricks.main", "dds.tools.admin")


# ---------------------------------------------------------------------------- the zygote

class _BecomeChild(BaseException):
    """Raised in a forked child to unwind the zygote's loop before running its program."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request


_children: dict[int, str] = {}      # pid -> status file


def _write_status(path: str, code: int, cpu: float) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{code} {cpu:.3f}")
    os.rename(tmp, path)


def _reap(_sig: int, _frame: Any) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = _children.pop(pid, None)
        if path is not None:
            _write_status(path, os.waitstatus_to_exitcode(status),
                          usage.ru_utime + usage.ru_stime)


def _serve(requests: TextIO, replies: TextIO) -> None:
    for line in requests:
        request = json.loads(line)
        # A child that exits at once must find its status file registered: SIGCHLD waits.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            raise _BecomeChild(request)
        _children[pid] = request["status"]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()


def _run_child(request: dict[str, Any]) -> None:
    """In the child: become ``python -m MODULE ARGS`` or ``python SCRIPT ARGS`` started by
    ``Popen(args, stdin=DEVNULL, stdout=out, stderr=err, cwd=cwd, start_new_session=True)``
    (``out`` and ``err`` appended to, the same file for a brick's log), then run it."""
    import runpy
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.setsid()
    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    out = os.open(request["out"], flags, 0o644)
    err = out if request["err"] == request["out"] else os.open(request["err"], flags, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.closerange(3, 1 << 16)
    os.environ.clear()
    os.environ.update(request["env"])
    argv, target = request["argv"], request["target"]
    for name in ("tests.harness", "tests"):    # the zygote's own packages
        sys.modules.pop(name, None)
    sys.orig_argv = list(argv)
    sys.argv = list(request["sys_argv"])
    if request["run"] == "module":
        assert target in MODULES, target
        sys.path[0] = os.getcwd()
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif request["run"] == "code":
        import builtins
        import types
        main = types.ModuleType("__main__")
        main.__builtins__ = builtins        # type: ignore[attr-defined]
        sys.modules["__main__"] = main
        sys.path[0] = ""
        exec(compile(target, "<string>", "exec"), main.__dict__)
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")


def main() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules
                    if m == "dds" or m.startswith("dds.") or m == "twisted.internet.reactor")
    if leaked:
        raise SystemExit(f"zygote: the preload imported {leaked}")
    requests, replies = sys.stdin, sys.stdout
    signal.signal(signal.SIGCHLD, _reap)
    try:
        _serve(requests, replies)
    except _BecomeChild as child:
        request = child.request
    else:
        return    # the test process closed the pipe: leave
    del requests, replies
    _run_child(request)


# ---------------------------------------------------------------------- the test side

#: CPU seconds of the zygote's children seen to exit so far (``tests.harness.timing``).
reaped_cpu = 0.0


class ZygoteChild:
    """A process forked by the zygote, with the part of ``subprocess.Popen`` the harness and
    the tests use: ``pid``, ``returncode``, ``poll``, ``wait``, ``send_signal``,
    ``terminate``, ``kill``.  The return code comes from the zygote, the child's parent."""

    def __init__(self, args: list[str], pid: int, status: Path) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self._status = status

    def poll(self) -> int | None:
        global reaped_cpu
        if self.returncode is None:
            try:
                code, cpu = self._status.read_text().split()
            except FileNotFoundError:
                return None
            self._status.unlink()
            self.returncode = int(code)
            reaped_cpu += float(cpu)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.005)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The test process's side: starts the zygote on first use, asks it for children."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._env: dict[str, str] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="dds-zygote-"))
        self._seq = 0

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._env = dict(os.environ)
            root = Path(__file__).resolve().parents[2]
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.harness.zygote"], cwd=root,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True)
            atexit.register(self.close)
        return self._proc

    def close(self) -> None:
        """End the zygote (it leaves when its stdin closes) and reap it."""
        with self._lock:
            if self._proc is not None and self._proc.stdin is not None:
                self._proc.stdin.close()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def usable(self, env: dict[str, str]) -> bool:
        """Whether a child with ``env`` starts as an exec'd interpreter would: the
        zygote's own environment may differ in ``DDS_*`` variables only."""
        if os.environ.get(ENV_SWITCH, "1") == "0":
            return False
        if self._proc is None:
            return True
        keys = set(env) | set(self._env)
        return all(env.get(k) == self._env.get(k) for k in keys
                   if not k.startswith("DDS_") and k not in _IGNORED)

    def spawn(self, args: list[str], cwd: Path, log: Path, env: dict[str, str]
              ) -> ZygoteChild:
        """``python -m dds.bricks.main ...`` (``args``), its output appended to ``log``."""
        return self._fork(args, cwd, env, str(log), str(log))

    def _fork(self, args: list[str], cwd: Path, env: dict[str, str], out: str, err: str
              ) -> ZygoteChild:
        """Fork ``python -m MODULE ...``, ``python -c CODE ...``, ``python SCRIPT ...`` or
        ``SCRIPT ...`` (a Python script run by its ``#!`` line) with this interpreter."""
        if args[1:2] == ["-m"]:
            run, target, sys_argv = "module", args[2], ["-m"] + args[3:]
            if target not in MODULES:
                raise ValueError(f"the zygote runs {MODULES}, not {target}")
        elif args[1:2] == ["-c"]:
            run, target, sys_argv = "code", args[2], ["-c"] + args[3:]
        elif args[0] == sys.executable:
            run, target, sys_argv = "path", args[1], args[1:]
        else:
            run, target, sys_argv = "path", args[0], list(args)
            args = [sys.executable] + list(args)
        with self._lock:
            proc = self._started()
            assert proc.stdin is not None and proc.stdout is not None
            self._seq += 1
            status = self._dir / f"{self._seq}.exit"
            proc.stdin.write(json.dumps({"argv": args, "run": run, "target": target,
                                         "sys_argv": sys_argv, "cwd": str(cwd),
                                         "out": out, "err": err, "env": env,
                                         "status": str(status)}) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"the zygote exited with {proc.wait()}")
            return ZygoteChild(args, json.loads(reply)["pid"], status)

    def command(self, args: list[str], env: dict[str, str], cwd: Path | None = None
                ) -> Command:
        """Start ``args``, a ``dds-admin`` command (``python -m dds.tools.admin ...`` or
        ``python .../dds-admin ...``) or a client program (``python -c CODE ...``), its
        output captured."""
        with self._lock:
            self._seq += 1
            base = self._dir / f"{self._seq}.run"
        out, err = base.with_suffix(".out"), base.with_suffix(".err")
        return Command(args, self._fork(args, cwd or Path.cwd(), env, str(out), str(err)),
                       out, err)

    def run(self, args: list[str], env: dict[str, str], timeout: float,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """What ``subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout)`` returns, for ``args`` a ``dds-admin`` command, forked: killed
        and ``TimeoutExpired`` after ``timeout``."""
        command = self.command(args, env, cwd)
        try:
            command.child.wait(timeout)
        except subprocess.TimeoutExpired:
            command.kill()
            killed = command.result()
            raise subprocess.TimeoutExpired(args, timeout, killed.stdout,
                                            killed.stderr) from None
        return command.result()


class Command:
    """A command or program forked by the zygote: its process and its output files."""

    def __init__(self, args: list[str], child: ZygoteChild, out: Path, err: Path) -> None:
        self.args = args
        self.child = child
        self._out, self._err = out, err

    def result(self) -> subprocess.CompletedProcess[str]:
        """Once the process exited: its status, and its output as
        ``subprocess.run(..., text=True)`` decodes it (the locale's encoding, universal
        newlines); the files are removed."""
        code = self.child.poll()
        assert code is not None, "the command still runs"
        out, err = _read(self._out), _read(self._err)
        self._out.unlink(missing_ok=True)
        self._err.unlink(missing_ok=True)
        return subprocess.CompletedProcess(self.args, code, out, err)

    def kill(self) -> None:
        self.child.kill()
        self.child.wait()


def _read(path: Path) -> str:
    """A child's output file; empty if it wrote nothing."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


_zygote: Zygote | None = None


def zygote() -> Zygote:
    global _zygote
    if _zygote is None:
        _zygote = Zygote()
    return _zygote


def run(args: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
    timeout=timeout)`` for a ``dds-admin`` command or a ``python -c`` program: forked by
    the zygote when it can be, else exec'd."""
    if zygote().usable(env):
        return zygote().run(args, env, timeout, cwd)
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


if __name__ == "__main__":
    main()
