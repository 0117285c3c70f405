"""docs/deploy.md, run: every shell command of the deployment guide, on namespace hosts.

The guide's ```sh blocks each begin with ``# on <where>`` (``host1``, ``host2``,
``host3``, ``admin``, several separated by commas, optionally ``, while hostN is down`` or
``, once hostN is back``, and ``, exits N`` when its commands are expected to exit with
status N, not 0: ``dds-admin status`` while a host is down).  This module parses them and runs every command, in order, on
four namespace hosts (``tests/multihost/netns``): three brick hosts and the admin host,
which is also the guide's application and monitoring host.  A block that is not
recognised (an unknown fence, host or placeholder, a ``systemctl``, ``journalctl`` or
``scp`` this test cannot stand in for) fails the test, as does a command that fails.

What is not the guide's own words, and why:

- **Places and names.** Each host has a directory of its own standing for its file
  system: ``/etc/dds``, ``/etc/systemd/system``, ``/opt/dds``, ``/var/lib/dds`` and
  ``/root`` in a command become that directory's; the placeholders (``HOST1_ADDR``…,
  ``DDS_SRC``: a copy of this working tree per host) are filled in.
- **root instead of ``dds``.** ``useradd`` is not run, and ``dds:dds`` / ``-o dds -g
  dds`` become root's; ``apt-get`` is not run (this machine has what it installs).
- **An offline pip.** ``pip install`` may not reach an index: the test's own
  virtualenv's site-packages are on ``PYTHONPATH`` (``PIP_NO_INDEX``), so the guide's
  ``pip install DDS_SRC`` finds the dependencies installed and installs DDS itself from
  the copy, into the guide's ``/opt/dds``; every command then runs DDS from there.
- **scp** copies between the hosts' directories (there is no ssh server).
- **systemd** is not running in a namespace.  ``systemctl`` and ``journalctl`` are done
  here from the unit the guide installed (``/etc/systemd/system/dds-brick@.service``):
  its ``ExecStart`` (``%i`` filled in) runs on the host with ``UMask`` and
  ``StateDirectory`` applied and a ``NOTIFY_SOCKET`` this test listens on; ``start``
  returns when the main process sent ``READY=1`` (``NotifyAccess=main``), fails when it
  exits first.  ``User=dds`` is not applied (root).
- **nft** is run in the brick hosts' namespaces when this machine has it; otherwise the
  command is not run and the firewall's test is skipped, saying so.  Nothing of the
  guide runs in the root namespace.
- **A lost host.** Before a block ``while hostN is down`` the host is powered off (its
  brick killed, its link cut) and an application's writes, one to each of its replica
  groups, make the cluster exclude it;
  before ``once hostN is back`` the link is restored and the host "boots": systemd
  starts the units that were enabled.

The guide's run is one module fixture (~50 s on an idle machine, most of it the four
``python3 -m venv``); the tests then check one behaviour each.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from dds.partition import PartitionId

from tests.multihost.netns import Host, Topology

pytestmark = pytest.mark.multihost

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "deploy.md"
UNIT_NAME = "dds-brick@.service"
UNIT_DIR = "/etc/systemd/system"
BRICK_HOSTS = ("host1", "host2", "host3")
LOCATIONS = (*BRICK_HOSTS, "admin")
#: Absolute paths of the guide that are each host's own (its directory's).
HOST_PATHS = ("/etc/dds", UNIT_DIR, "/opt/dds", "/var/lib/dds", "/root")
PLACEHOLDER_RE = re.compile(r"\b(?:[A-Z][A-Z0-9]*_ADDR|DDS_SRC)\b")
HEADER_RE = re.compile(r"^# on (?P<where>[a-z0-9]+(?:, [a-z0-9]+)*?)"
                       r"(?:, (?:while (?P<down>host\d) is down|once (?P<back>host\d) is back))?"
                       r"(?:, exits (?P<exits>\d+))?\s*$")
PATH_RE = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(p) for p in HOST_PATHS) +
                     r")(?=[/\s\"':;,)]|$)")
USER_RE = re.compile(r"(?<=-o )dds\b|(?<=-g )dds\b|\bdds:dds\b")
FENCES = ("sh", "text")          # run / shown only (sample output)
SKIPPED = {"apt-get": "distribution packages: this machine has them",
           "useradd": "the test runs the bricks as root"}
SYSTEMCTL = ("daemon-reload", "enable", "start", "stop", "restart", "status")
COMMAND_TIMEOUT_S = 180.0
START_TIMEOUT_S = 60.0
ADMIN_TLS = ("/root/dds-ca/ca.crt", "/root/dds-ca/admin.crt", "/root/dds-ca/admin.key")
CLIENT_TLS = {"ca": "/etc/dds/client/ca.crt", "cert": "/etc/dds/client/app.crt",
              "key": "/etc/dds/client/app.key"}
RESULT_MARK = "RESULT "


class Unrecognised(Exception):
    """The guide has a block or command this test does not know how to run."""


# -- the guide, parsed ---------------------------------------------------------------------

@attrs.frozen
class Block:
    line: int                   # of the opening fence, 1-based
    lang: str
    text: str
    where: tuple[str, ...] = ()
    down: str | None = None
    back: str | None = None
    commands: tuple[str, ...] = ()
    #: The exit status every command of the block must have (``, exits N``).
    exits: int = 0


def split_commands(body: str, line: int) -> list[str]:
    """The commands of a shell block: a line, with its backslash continuations and the
    body of a here-document; comment and blank lines are dropped."""
    lines = body.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        cmd = [lines[i]]
        while cmd[-1].endswith("\\"):
            i += 1
            if i == len(lines):
                raise Unrecognised(f"line {line}: a continuation runs off the block")
            cmd.append(lines[i])
        heredoc = re.search(r"<<-?\s*(['\"]?)(\w+)\1", "\n".join(cmd))
        if heredoc:
            end = heredoc.group(2)
            while True:
                i += 1
                if i == len(lines):
                    raise Unrecognised(f"line {line}: here-document {end} is not closed")
                cmd.append(lines[i])
                if lines[i].strip() == end:
                    break
        out.append("\n".join(cmd))
        i += 1
    return out


def parse_guide(text: str) -> list[Block]:
    """Every fenced block; shell blocks with where they run and their commands."""
    blocks = []
    for m in re.finditer(r"^```(?P<lang>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", text,
                         re.MULTILINE | re.DOTALL):
        line = text.count("\n", 0, m.start()) + 1
        lang, body = m.group("lang").strip(), m.group("body")
        if lang not in FENCES:
            raise Unrecognised(f"line {line}: a ```{lang} block (known: {FENCES})")
        if lang != "sh":
            blocks.append(Block(line, lang, body))
            continue
        first = body.splitlines()[0] if body.strip() else ""
        header = HEADER_RE.match(first)
        if header is None:
            raise Unrecognised(f"line {line}: a shell block must begin with '# on <host>"
                               f"[, <host>...]', not {first!r}")
        where = tuple(header.group("where").split(", "))
        unknown = [w for w in where if w not in LOCATIONS]
        if unknown:
            raise Unrecognised(f"line {line}: unknown host {unknown} (known: {LOCATIONS})")
        commands = split_commands(body, line)
        if not commands:
            raise Unrecognised(f"line {line}: a shell block without a command")
        blocks.append(Block(line, lang, body, where, header.group("down"),
                            header.group("back"), tuple(commands),
                            int(header.group("exits") or 0)))
    return blocks


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def classify(command: str, line: int) -> str:
    """How a command is run: ``skip``, ``systemctl``, ``journalctl``, ``scp`` or
    ``shell``; Unrecognised for a systemd or scp use this test cannot do."""
    first = command.split(None, 1)[0]
    if first in SKIPPED:
        return "skip"
    if first == "systemctl":
        w = words(command)
        args = [a for a in w[1:] if not a.startswith("-")]
        if not args or args[0] not in SYSTEMCTL:
            raise Unrecognised(f"line {line}: systemctl {' '.join(w[1:])!r} (known: "
                               f"{SYSTEMCTL})")
        if args[0] != "daemon-reload" and not all(
                re.fullmatch(r"dds-brick@[A-Za-z0-9_-]+(\.service)?", u) for u in args[1:]):
            raise Unrecognised(f"line {line}: systemctl {args[0]} of units other than "
                               f"dds-brick@<id>: {args[1:]}")
        return "systemctl"
    if first == "journalctl":
        w = words(command)
        if "-u" not in w:
            raise Unrecognised(f"line {line}: journalctl without -u <unit>")
        return "journalctl"
    if first == "scp":
        dest = words(command)[-1]
        if not re.fullmatch(r"(?:\w+@)?[A-Z0-9]+_ADDR:/.*", dest):
            raise Unrecognised(f"line {line}: scp to {dest!r}: expected [user@]HOSTn_ADDR:/path")
        return "scp"
    return "shell"


# -- hosts and what runs on them -------------------------------------------------------------

@attrs.define
class Location:
    """One host of the guide: its namespace host and its directory."""
    name: str
    host: Host
    root: Path
    src: Path                # its DDS_SRC

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


@attrs.define
class Unit:
    """A ``dds-brick@<instance>`` started by :class:`FakeSystemd`."""
    instance: str
    proc: subprocess.Popen[bytes]
    journal: Path
    sock: socket.socket
    messages: list[tuple[int, str]] = attrs.Factory(list)
    ready: bool = False
    #: Whether the brick's RPC port accepted a connection from the admin host right
    #: after READY=1.
    served_at_ready: bool | None = None
    cond: threading.Condition = attrs.Factory(threading.Condition)


def parse_unit(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise Unrecognised(f"{UNIT_NAME}: cannot read {raw!r}")
        current[key.strip()] = value.strip()
    return sections


class FakeSystemd:
    """What ``systemctl`` and ``journalctl`` do on one host, for ``dds-brick@`` units."""

    def __init__(self, guide: "GuideRun", loc: Location) -> None:
        self.guide = guide
        self.loc = loc
        self.units: dict[str, Unit] = {}
        self.enabled: set[str] = set()
        self.finished: dict[str, int] = {}        # instance -> exit status of its last run
        self.notify_dir = Path(tempfile.mkdtemp(prefix="ddsn-", dir="/tmp"))

    def service(self) -> dict[str, str]:
        unit_file = self.loc.path(f"{UNIT_DIR}/{UNIT_NAME}")
        if not unit_file.exists():
            raise AssertionError(f"{self.loc.name}: no {UNIT_DIR}/{UNIT_NAME} (was the unit "
                                 f"installed?)")
        service = parse_unit(unit_file.read_text()).get("Service", {})
        assert service.get("Type") == "notify", service
        return service

    def exec_start(self, instance: str) -> list[str]:
        line = self.service()["ExecStart"].replace("%i", instance).replace("%%", "%")
        if "%" in line:
            raise Unrecognised(f"ExecStart {line!r}: a specifier other than %i")
        return words(self.guide.host_text(line, self.loc))

    def journal(self, instance: str) -> Path:
        return self.loc.root / "journal" / f"dds-brick@{instance}.log"

    # -- systemctl ----------------------------------------------------------------------------

    def start(self, instance: str, timeout: float = START_TIMEOUT_S) -> Unit:
        """Run the unit's ExecStart and return once it sent READY=1; AssertionError with
        its journal when it exits first (``self.finished`` has its status)."""
        current = self.units.get(instance)
        if current is not None and current.proc.poll() is None:
            return current
        service = self.service()
        state = service.get("StateDirectory")
        if state:
            directory = self.loc.path(f"/var/lib/{state}")
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(int(service.get("StateDirectoryMode", "0755"), 8))
        umask = int(service.get("UMask", "0022"), 8)
        path = self.notify_dir / instance
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(0.2)
        env = {**self.guide.service_env(), "NOTIFY_SOCKET": str(path)}
        journal = self.journal(instance)
        journal.parent.mkdir(parents=True, exist_ok=True)
        with open(journal, "ab") as log:
            proc = self.guide.topology.popen(self.loc.host, self.exec_start(instance),
                                             env=env, stdout=log, stderr=subprocess.STDOUT,
                                             cwd="/", umask=umask, start_new_session=True)
        unit = Unit(instance, proc, journal, sock)
        self.units[instance] = unit
        threading.Thread(target=self._listen, args=(unit,), daemon=True).start()
        deadline = time.monotonic() + timeout
        with unit.cond:
            while not unit.ready:
                if proc.poll() is not None:
                    self.finished[instance] = proc.returncode
                    raise AssertionError(
                        f"{self.loc.name}: dds-brick@{instance} exited with status "
                        f"{proc.returncode} before READY=1:\n{self.tail(instance, 20)}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.loc.name}: dds-brick@{instance} sent no "
                                         f"READY=1 within {timeout:g}s:\n"
                                         f"{self.tail(instance, 20)}")
                unit.cond.wait(0.1)
        unit.served_at_ready = self.guide.port_open(self.guide.brick_address(self.loc))
        return unit

    def _listen(self, unit: Unit) -> None:
        """Collect the unit's notifications; only the main process's count
        (NotifyAccess=main)."""
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while True:
            try:
                data, ancillary, _, _ = unit.sock.recvmsg(4096, size)
            except socket.timeout:
                if unit.proc.poll() is not None:
                    break
                continue
            except OSError:
                break
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
            text = data.decode(errors="replace")
            with unit.cond:
                unit.messages.append((pid, text))
                if pid == unit.proc.pid and "READY=1" in text.splitlines():
                    unit.ready = True
                unit.cond.notify_all()
        unit.sock.close()

    def stop(self, instance: str, timeout: float = 30.0) -> None:
        unit = self.units.get(instance)
        if unit is None or unit.proc.poll() is not None:
            return
        unit.proc.send_signal(signal.SIGTERM)
        try:
            self.finished[instance] = unit.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            unit.proc.kill()
            self.finished[instance] = unit.proc.wait(timeout)

    def power_off(self) -> None:
        """The host loses power: every unit is killed where it stands."""
        for unit in self.units.values():
            if unit.proc.poll() is None:
                unit.proc.kill()
                unit.proc.wait(10)

    def boot(self) -> None:
        for instance in sorted(self.enabled):
            self.start(instance)

    def status(self, instance: str) -> tuple[int, str]:
        """Like ``systemctl status``: 0 and the state when running, 3 otherwise."""
        unit = self.units.get(instance)
        running = unit is not None and unit.proc.poll() is None
        state = ("active (running)" if running else
                 f"failed (status={self.finished.get(instance)})" if instance in self.finished
                 else "inactive (dead)")
        lines = [f"* dds-brick@{instance}.service - DDS storage brick {instance}",
                 f"     Loaded: {UNIT_DIR}/{UNIT_NAME}; "
                 f"{'enabled' if instance in self.enabled else 'disabled'}",
                 f"     Active: {state}"]
        if running:
            assert unit is not None
            lines.append(f"   Main PID: {unit.proc.pid}")
        return (0 if running else 3), "\n".join(lines + ["", self.tail(instance, 5)])

    def systemctl(self, command: str) -> tuple[int, str]:
        w = [a for a in words(command)[1:] if not a.startswith("-")]
        now = "--now" in words(command)
        verb, instances = w[0], [u.split("@", 1)[1].removesuffix(".service") for u in w[1:]]
        if verb == "daemon-reload":
            self.service()
            return 0, ""
        out = []
        for instance in instances:
            if verb == "enable":
                self.enabled.add(instance)
                out.append(f"Created symlink for dds-brick@{instance}.service")
                if now:
                    self.start(instance)
            elif verb == "start":
                self.start(instance)
            elif verb == "stop":
                self.stop(instance)
            elif verb == "restart":
                self.stop(instance)
                self.start(instance)
            elif verb == "status":
                code, text = self.status(instance)
                if code:
                    return code, text
                out.append(text)
        return 0, "\n".join(out)

    def journalctl(self, command: str) -> tuple[int, str]:
        w = words(command)
        unit = w[w.index("-u") + 1]
        lines = int(w[w.index("-n") + 1]) if "-n" in w else 10
        return 0, self.tail(unit.split("@", 1)[1].removesuffix(".service"), lines)

    def tail(self, instance: str, lines: int) -> str:
        journal = self.journal(instance)
        if not journal.exists():
            return "-- No entries --"
        return "\n".join(journal.read_text(errors="replace").splitlines()[-lines:])

    def shutdown(self) -> None:
        for instance in list(self.units):
            try:
                self.stop(instance, timeout=20.0)
            except Exception:           # keep stopping the others
                pass
        shutil.rmtree(self.notify_dir, ignore_errors=True)


@attrs.define
class Step:
    """One command of the guide as it ran."""
    line: int
    where: str
    command: str
    code: int
    output: str
    how: str
    seconds: float


class GuideRun:
    """The guide's blocks run in order on the four hosts; see the module docstring."""

    def __init__(self, root: Path, topology: Topology, source: Path) -> None:
        self.root = root
        self.topology = topology
        self.locations: dict[str, Location] = {}
        for name, host in zip(LOCATIONS, topology.hosts):
            loc_root = root / name
            for d in ("etc/systemd/system", "var/lib", "opt", "root", "bin"):
                (loc_root / d).mkdir(parents=True, exist_ok=True)
            (loc_root / "root").chmod(0o700)
            src = loc_root / "src"
            shutil.copytree(source, src, symlinks=True)
            self.locations[name] = Location(name, host, loc_root, src)
        self.bin = root / "bin"
        self.bin.mkdir()
        (self.bin / "python3").symlink_to(sys.executable)
        self.systemd = {name: FakeSystemd(self, loc) for name, loc in self.locations.items()}
        self.steps: list[Step] = []
        self.lock = threading.Lock()
        self.nft = shutil.which("nft")

    # -- substitutions -------------------------------------------------------------------------

    def placeholders(self, loc: Location) -> dict[str, str]:
        admin = self.locations["admin"].host.address
        values = {f"HOST{i}_ADDR": self.locations[f"host{i}"].host.address for i in (1, 2, 3)}
        values.update(ADMIN_ADDR=admin, APP_ADDR=admin, MONITOR_ADDR=admin,
                      DDS_SRC=str(loc.src))
        return values

    def host_text(self, text: str, loc: Location) -> str:
        """``text`` as run on ``loc``: its paths, root for ``dds``, placeholders filled."""
        values = self.placeholders(loc)
        unknown = sorted(set(PLACEHOLDER_RE.findall(text)) - set(values))
        if unknown:
            raise Unrecognised(f"unknown placeholders {unknown}")
        text = PATH_RE.sub(lambda m: str(loc.path(m.group(1))), text)
        text = USER_RE.sub(lambda m: "root:root" if ":" in m.group(0) else "root", text)
        return PLACEHOLDER_RE.sub(lambda m: values[m.group(0)], text)

    def env(self, loc: Location) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(loc.path("/root")), "LANG": "C.UTF-8", "TERM": "dumb",
            "COLUMNS": "160",
            **self.offline_python()}

    def service_env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8", **self.offline_python()}

    @staticmethod
    def offline_python() -> dict[str, str]:
        """The dependencies from this test's virtualenv, pip without an index (see the
        module docstring)."""
        paths = sysconfig.get_paths()
        return {"PYTHONPATH": os.pathsep.join(dict.fromkeys([paths["purelib"],
                                                             paths["platlib"]])),
                "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}

    # -- running -------------------------------------------------------------------------------

    def run_blocks(self, blocks: list[Block],
                   before: Callable[[Block], None] = lambda b: None) -> None:
        for block in blocks:
            if block.lang != "sh":
                continue
            before(block)
            if len(block.where) == 1:
                self.run_block(block, self.locations[block.where[0]])
                continue
            with ThreadPoolExecutor(len(block.where)) as pool:
                for done in [pool.submit(self.run_block, block, self.locations[w])
                             for w in block.where]:
                    done.result()

    def run_block(self, block: Block, loc: Location) -> None:
        for command in block.commands:
            how = classify(command, block.line)
            started = time.monotonic()
            code, output = self.run_command(command, how, loc)
            with self.lock:
                self.steps.append(Step(block.line, loc.name, command, code, output, how,
                                       time.monotonic() - started))
            if code != block.exits:
                raise AssertionError(f"docs/deploy.md line {block.line}, on {loc.name}: "
                                     f"exit status {code} (expected {block.exits}):\n"
                                     f"$ {command}\n{output}")

    def run_command(self, command: str, how: str, loc: Location) -> tuple[int, str]:
        if how == "skip":
            return 0, f"(not run: {SKIPPED[command.split()[0]]})"
        if how == "systemctl":
            return self.systemd[loc.name].systemctl(command)
        if how == "journalctl":
            return self.systemd[loc.name].journalctl(command)
        if how == "scp":
            return self.scp(command, loc)
        if command.split()[0] == "nft" and self.nft is None:
            return 0, "(not run: nft is not installed on this machine)"
        text = self.host_text(command, loc)
        proc = self.topology.run(loc.host, ["bash", "--noprofile", "--norc", "-euo",
                                            "pipefail", "-c", text],
                                 env=self.env(loc), cwd=loc.path("/root"),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=COMMAND_TIMEOUT_S)
        return proc.returncode, proc.stdout

    def scp(self, command: str, loc: Location) -> tuple[int, str]:
        args = [a for a in words(command)[1:] if a != "-p"]
        if any(a.startswith("-") for a in args):
            raise Unrecognised(f"scp options {args}")
        target, _, dest_path = args[-1].partition("@")[2].partition(":") if "@" in args[-1] \
            else args[-1].partition(":")
        by_placeholder = {f"HOST{i}_ADDR": f"host{i}" for i in (1, 2, 3)}
        dest_loc = self.locations[by_placeholder[target]]
        dest = Path(self.host_text(dest_path, dest_loc))
        out = []
        for src in args[:-1]:
            source = Path(self.host_text(src, loc))
            target_file = dest / source.name if dest_path.endswith("/") or dest.is_dir() \
                else dest
            if not target_file.parent.is_dir():
                return 1, f"scp: {dest_path}: No such file or directory"
            shutil.copy(source, target_file)
            out.append(f"{source.name} -> {dest_loc.name}:{dest_path}")
        return 0, "\n".join(out)

    # -- looking at the cluster ----------------------------------------------------------------

    def brick_address(self, loc: Location) -> str:
        return loc.host.hostport(7401)

    def port_open(self, address: str) -> bool:
        return self.reachable_from("admin", address)

    def reachable_from(self, where: str, address: str, timeout: float = 3.0) -> bool:
        """Whether a TCP connection from ``where`` to ``address`` is accepted within
        ``timeout`` (a dropped SYN is a timeout)."""
        host, port = address.rsplit(":", 1)
        code = ("import socket, sys\n"
                "socket.create_connection((sys.argv[1], int(sys.argv[2])), "
                "float(sys.argv[3])).close()")
        loc = self.locations[where]
        proc = self.topology.run(loc.host, [sys.executable, "-c", code, host, port,
                                            str(timeout)],
                                 cwd=loc.path("/root"), capture_output=True, text=True,
                                 timeout=timeout + 30)
        return proc.returncode == 0

    def admin_python(self, code: str, *args: str,
                     timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Python of the guide's install (``/opt/dds/bin/python``) on the admin host."""
        admin = self.locations["admin"]
        return self.topology.run(admin.host, [str(admin.path("/opt/dds/bin/python")), "-c",
                                              code, *args],
                                 env=self.env(admin), cwd=admin.path("/root"),
                                 capture_output=True, text=True, timeout=timeout)

    def admin_status(self) -> dict[str, Any]:
        """``dds-admin status --json`` with the guide's admin certificate."""
        admin = self.locations["admin"]
        ca, cert, key = (str(admin.path(p)) for p in ADMIN_TLS)
        seeds = ",".join(self.brick_address(self.locations[h]) for h in BRICK_HOSTS)
        proc = self.topology.run(admin.host, [str(admin.path("/opt/dds/bin/dds-admin")),
                                              "status", "--json", "--timeout", "2",
                                              "--seeds", seeds, "--ca-file", ca,
                                              "--cert-file", cert, "--key-file", key],
                                 env=self.env(admin), capture_output=True, text=True,
                                 timeout=COMMAND_TIMEOUT_S)
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"status printed no report:\n{proc.stdout}"
                                 f"{proc.stderr}") from None
        return report

    def wait_status(self, condition: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            report = self.admin_status()
            if condition(report):
                return report
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last "
                                   f"status:\n{json.dumps(report, indent=1)[:5000]}")

    def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_status(lambda r: r["ok"] and r["membership_ok"],
                                "every member of every RG active and serving", timeout)

    def client(self, code: str, **params: Any) -> Any:
        """``code`` run on the admin host (the guide's application host) with ``client``,
        a BlockingDDSClient on the guide's client certificate; it sets ``result``."""
        admin = self.locations["admin"]
        tls = {k: str(admin.path(v)) for k, v in CLIENT_TLS.items()}
        seeds = [self.brick_address(self.locations[h]) for h in BRICK_HOSTS]
        script = "\n".join([
            "import json, sys",
            "from dds.lib import BlockingDDSClient",
            "params = json.loads(sys.argv[1])",
            "client = BlockingDDSClient(params['seeds'], cluster='dds', timeout=30.0,",
            "                           tls=params['tls'])",
            "try:",
            textwrap.indent(textwrap.dedent(code).strip(), "    "),
            "finally:",
            "    client.close()",
            f"print({RESULT_MARK!r} + json.dumps(result), flush=True)"])
        proc = self.admin_python(script, json.dumps({"seeds": seeds, "tls": tls, **params}))
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(RESULT_MARK) and proc.returncode == 0:
                return json.loads(line[len(RESULT_MARK):])
        raise AssertionError(f"client script failed ({proc.returncode}):\n{proc.stdout}"
                             f"{proc.stderr}")

    def http_get(self, address: str, path: str) -> tuple[int, str]:
        """GET on the admin host (the guide's monitoring host): status and body."""
        code = textwrap.dedent("""
            import json, sys, urllib.error, urllib.request
            try:
                with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
                    code, body = r.status, r.read()
            except urllib.error.HTTPError as e:
                code, body = e.code, e.read()
            print(json.dumps([code, body.decode()]))
            """)
        proc = self.admin_python(code, f"http://{address}{path}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        status, body = json.loads(proc.stdout)
        return int(status), str(body)

    def shutdown(self) -> None:
        for systemd in self.systemd.values():
            systemd.shutdown()


# -- the lost host -----------------------------------------------------------------------------

@attrs.define
class Outage:
    """What the guide's lost-host section saw."""
    host: str = ""
    brick: str = ""
    excluded_rgs: list[str] = attrs.Factory(list)
    written: dict[str, int] = attrs.Factory(dict)
    write_seconds: float = 0.0
    resynced: dict[str, Any] = attrs.Factory(dict)


def brick_on(run: GuideRun, report: dict[str, Any], host: str) -> str:
    """The brick id whose address in the map is ``host``'s."""
    address = run.brick_address(run.locations[host])
    return next(b["id"] for b in report["bricks"] if b["address"] == address)


def rgs_of(report: dict[str, Any], brick: str) -> list[str]:
    return sorted(g["name"] for g in report["rgs"]
                  if any(m["brick"] == brick for m in g["members"]))


def route_key(report: dict[str, Any], rg: str) -> str:
    """A key held by ``rg`` in the map of ``report``."""
    pids = [PartitionId.parse(p) for g in report["rgs"] if g["name"] == rg
            for p, state in g["partition_states"].items() if state == "active"]
    return next(key for i in range(100_000) for key in [f"while-down-{rg}-{i}"]
                if any(p.owns(key.encode()) for p in pids))


def member_states(report: dict[str, Any], brick: str) -> dict[str, str]:
    return {g["name"]: m["state"] for g in report["rgs"] for m in g["members"]
            if m["brick"] == brick}


def conditions(run: GuideRun, outage: Outage) -> Callable[[Block], None]:
    """What must be true before a block ``while hostN is down`` / ``once hostN is
    back`` (see the module docstring)."""

    def before(block: Block) -> None:
        if block.down is not None and outage.host != block.down:
            healthy = run.wait_healthy()
            outage.host, outage.brick = block.down, brick_on(run, healthy, block.down)
            items = {route_key(healthy, rg): "yes" for rg in rgs_of(healthy, outage.brick)}
            run.systemd[block.down].power_off()
            run.topology.cut(run.locations[block.down].host)
            # The application goes on writing: its first write to each of the lost
            # brick's groups has it excluded there.
            started = time.monotonic()
            outage.written = run.client("""
                from concurrent.futures import ThreadPoolExecutor
                items = sorted(params['items'].items())
                with ThreadPoolExecutor(len(items)) as pool:
                    done = pool.map(lambda kv: client.put(kv[0].encode(), kv[1].encode()),
                                    items)
                    result = dict(zip([k for k, _ in items], done))
                """, items=items)
            outage.write_seconds = time.monotonic() - started
            report = run.wait_status(
                lambda r: set(member_states(r, outage.brick).values()) == {"excluded"},
                f"{outage.brick} excluded")
            outage.excluded_rgs = sorted(member_states(report, outage.brick))
        if block.back is not None:
            assert outage.host == block.back, f"{block.back} is back but was not down"
            run.topology.restore(run.locations[block.back].host)
            run.systemd[block.back].boot()
            # "Once back": its brick answers and holds the cluster's map again, so that
            # `dds-admin status` exits 0 (its members may still be recovering).
            run.wait_status(lambda r: r["ok"], f"{outage.brick} up, on the cluster's map")
    return before


# -- the fixture -------------------------------------------------------------------------------

def source_copy(dest: Path) -> Path:
    """This working tree's files (tracked and new, not ignored) copied to ``dest``."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co",
                             "--exclude-standard"], capture_output=True, check=True,
                            timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@attrs.define
class Deployment:
    run: GuideRun
    blocks: list[Block]
    outage: Outage
    seconds: float


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    blocks = parse_guide(GUIDE.read_text())
    root = tmp_path_factory.mktemp("deploy")
    source = source_copy(root / "source")
    started = time.monotonic()
    topology = Topology.create(len(LOCATIONS))
    run = GuideRun(root / "hosts", topology, source)
    outage = Outage()
    try:
        run.run_blocks(blocks, conditions(run, outage))
        outage.resynced = run.wait_healthy(timeout=90.0)
        yield Deployment(run, blocks, outage, time.monotonic() - started)
    finally:
        # Every command with its output, for reading after a failure.
        (root / "transcript.txt").write_text("".join(
            f"--- line {s.line} on {s.where} ({s.how}, exit {s.code}, {s.seconds:.1f}s)\n"
            f"$ {s.command}\n{s.output}\n" for s in run.steps))
        try:
            run.shutdown()
        finally:
            topology.destroy()


# -- the tests ---------------------------------------------------------------------------------

def test_every_block_of_the_guide_is_recognised() -> None:
    blocks = parse_guide(GUIDE.read_text())
    shell = [b for b in blocks if b.lang == "sh"]
    assert shell, "no shell block"
    for b in shell:
        for command in b.commands:
            classify(command, b.line)
            unknown = set(PLACEHOLDER_RE.findall(command)) - {
                "HOST1_ADDR", "HOST2_ADDR", "HOST3_ADDR", "ADMIN_ADDR", "APP_ADDR",
                "MONITOR_ADDR", "DDS_SRC"}
            assert not unknown, (b.line, unknown)


def test_a_block_header_may_give_the_exit_status_its_commands_must_have() -> None:
    text = ("```sh\n# on admin, while host3 is down, exits 1\ndds-admin status\n```\n"
            "```sh\n# on admin\ndds-admin status\n```\n")
    down, normal = parse_guide(text)
    assert (down.down, down.exits) == ("host3", 1)
    assert (normal.down, normal.exits) == (None, 0)


def test_the_guide_covers_each_step_of_a_deployment() -> None:
    """The steps an operator needs are there, as commands (not only as prose)."""
    commands = "\n".join(c for b in parse_guide(GUIDE.read_text()) if b.lang == "sh"
                         for c in b.commands)
    wanted = {
        "a virtualenv": r"python3 -m venv /opt/dds",
        "pip install": r"/opt/dds/bin/pip install DDS_SRC",
        "the CA": r"dds-admin certs init /root/dds-ca --cluster dds",
        "brick certificates": r"certs issue --role brick \$id",
        "the admin certificate": r"certs issue --role admin admin",
        "a client certificate": r"certs issue --role client app",
        "private key modes": r"chmod 0600 /etc/dds/tls/\*\.key",
        "the unit": r"cp DDS_SRC/conf/dds-brick@\.service /etc/systemd/system/",
        "TLS bricks": r'mode = "tls"',
        "init with the admin certificate": r"dds-admin init --config /etc/dds/cluster\.toml"
                                           r" \\\n +--ca-file",
        "status": r"dds-admin status --seeds",
        "healthz": r"curl -fsS http://HOST1_ADDR:7403/healthz",
        "metrics": r"dds_tls_cert_expiry_seconds",
        "certificate expiry": r"dds-admin certs show",
        "a client write with tls=": r"BlockingDDSClient\(seeds, cluster=\"dds\", tls=tls\)",
    }
    missing = [what for what, pattern in wanted.items() if not re.search(pattern, commands)]
    assert not missing, missing
    for brick, host in (("b1", "host1"), ("b2", "host2"), ("b3", "host3")):
        assert f"systemctl enable --now dds-brick@{brick}" in commands
        assert re.search(rf'advertise = "{host.upper()}_ADDR"', commands), host


def test_every_command_of_the_guide_runs(deployment: Deployment) -> None:
    steps = deployment.run.steps
    ran = {(s.line, s.command) for s in steps}
    listed = {(b.line, c) for b in deployment.blocks if b.lang == "sh" for c in b.commands}
    assert ran == listed, sorted(listed - ran)
    exits = {b.line: b.exits for b in deployment.blocks}
    wrong = [(s.line, s.command, s.code) for s in steps if s.code != exits[s.line]]
    assert not wrong, wrong
    print(f"\nthe guide ran in {deployment.seconds:.1f}s; slowest commands:")
    for s in sorted(steps, key=lambda s: -s.seconds)[:8]:
        print(f"  {s.seconds:5.1f}s line {s.line} on {s.where}: {s.command.splitlines()[0]}")
    print("not run as written:")
    for s in steps:
        if s.output.startswith("(not run"):
            print(f"  line {s.line} on {s.where}: {s.command.splitlines()[0]}  {s.output}")


def test_the_installed_dds_is_the_one_that_runs(deployment: Deployment) -> None:
    proc = deployment.run.admin_python("import dds.bricks.main as m; print(m.__file__)")
    assert proc.stdout.strip().startswith(
        str(deployment.run.locations["admin"].path("/opt/dds/lib"))), proc.stdout


def test_each_brick_sends_ready_once_it_serves(deployment: Deployment) -> None:
    for host in BRICK_HOSTS:
        systemd = deployment.run.systemd[host]
        assert systemd.enabled, host
        for instance in systemd.enabled:          # the guide's, not a broken one's
            unit = systemd.units[instance]
            assert unit.ready and unit.served_at_ready, (host, instance, unit.messages)
            ready = [m for m in unit.messages if "READY=1" in m[1].splitlines()]
            assert [pid for pid, _ in ready] == [unit.proc.pid], unit.messages


def test_a_brick_answers_healthz_503_until_the_cluster_is_initialized(
        deployment: Deployment) -> None:
    before_init = [s for s in deployment.run.steps
                   if "127.0.0.1:7403/healthz" in s.command]
    assert len(before_init) == 1, before_init
    body, _, code = before_init[0].output.strip().rpartition(" HTTP ")
    assert (code, json.loads(body)["ok"]) == ("503", False), before_init[0].output


def test_a_renewed_brick_certificate_is_the_one_the_restarted_brick_presents(
        deployment: Deployment) -> None:
    run = deployment.run
    shown = [re.search(r"serial\s+([0-9a-f]+)", s.output) for s in run.steps
             if s.where == "host1" and "certs show /etc/dds/tls/b1.crt" in s.command]
    assert len(shown) == 2 and all(shown), [s.command for s in run.steps]
    first, renewed = (m.group(1) for m in shown if m is not None)
    assert first != renewed
    admin = run.locations["admin"]
    ca, cert, key = (str(admin.path(p)) for p in ADMIN_TLS)
    presented = run.admin_python(textwrap.dedent("""
        import socket, ssl, sys
        from cryptography import x509
        host, port, ca, cert, key = sys.argv[1:]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(ca)
        ctx.load_cert_chain(cert, key)
        with socket.create_connection((host, int(port)), 5) as raw:
            with ctx.wrap_socket(raw) as conn:
                der = conn.getpeercert(binary_form=True)
        print(format(x509.load_der_x509_certificate(der).serial_number, "x"))
        """), run.locations["host1"].host.address, "7401", ca, cert, key)
    assert presented.returncode == 0, presented.stderr
    assert presented.stdout.strip() == renewed


def test_a_lost_host_is_excluded_and_resyncs_when_it_returns(deployment: Deployment) -> None:
    outage = deployment.outage
    assert outage.host == "host3" and outage.brick == "b3", outage
    assert outage.excluded_rgs and outage.written
    assert set(outage.written.values()) == {1}, outage.written
    print(f"\nwrites to {outage.excluded_rgs} with {outage.brick} lost took "
          f"{outage.write_seconds:.1f}s (a client process included)")
    down_status = [s for s in deployment.run.steps
                   if s.how == "shell" and "dds-admin status" in s.command
                   and s.line in {b.line for b in deployment.blocks if b.down}]
    assert down_status and "b3 excluded" in down_status[0].output, down_status
    report = outage.resynced
    states = member_states(report, "b3")
    assert set(states) == set(outage.excluded_rgs) and set(states.values()) == {"active"}
    recovery = next(b for b in report["bricks"] if b["id"] == "b3")["recovery"]
    assert {g: recovery.get(g, {}).get("phase") for g in states} == {
        g: "done" for g in states}, recovery


def test_the_client_host_writes_and_reads_with_the_client_certificate(
        deployment: Deployment) -> None:
    result = deployment.run.client("""
        version = client.put(b'deploy-guide', b'written from the client host')
        got = client.get(b'deploy-guide')
        result = [version, got.value.decode(), got.version]
        """)
    assert result == [1, "written from the client host", 1]
    assert deployment.run.client(
        "result = [client.get(k.encode()).value.decode() for k in params['keys']]",
        keys=sorted(deployment.outage.written)) == ["yes"] * len(deployment.outage.written)


def test_healthz_answers_over_http_on_a_host_address(deployment: Deployment) -> None:
    run = deployment.run
    for host, brick in (("host1", "b1"), ("host2", "b2"), ("host3", "b3")):
        code, body = run.http_get(run.locations[host].host.hostport(7403), "/healthz")
        assert code == 200, body
        assert (json.loads(body)["brick"], json.loads(body)["ok"]) == (brick, True)


def test_a_brick_with_a_broken_config_exits_2_and_is_not_ready(
        deployment: Deployment) -> None:
    """A key others can read (a copy made with the wrong mode): the unit's ExecStart exits
    with a status of RestartPreventExitStatus, so systemd would not restart it, and never
    says READY=1."""
    run = deployment.run
    host1 = run.locations["host1"]
    systemd = run.systemd["host1"]
    tls = host1.path("/etc/dds/tls")
    shutil.copy(tls / "b1.key", tls / "broken.key")
    (tls / "broken.key").chmod(0o644)
    config = host1.path("/etc/dds/b1.toml").read_text().replace("b1.key", "broken.key")
    host1.path("/etc/dds/broken.toml").write_text(config)
    try:
        with pytest.raises(AssertionError, match="before READY=1"):
            systemd.start("broken", timeout=30.0)
    finally:
        for leftover in (tls / "broken.key", host1.path("/etc/dds/broken.toml")):
            leftover.unlink()
    prevent = systemd.service()["RestartPreventExitStatus"].split()
    assert str(systemd.finished["broken"]) in prevent and systemd.finished["broken"] == 2
    journal = systemd.tail("broken", 5)
    assert "broken.key" in journal and "chmod 600" in journal, journal
    assert not systemd.units["broken"].ready


def test_the_firewall_admits_the_copy_stream_from_bricks_only(deployment: Deployment) -> None:
    """The guide's nftables rules, where this machine has nft: port 7402 of a brick is
    reachable from another brick host, not from the admin host (7401 is, as every
    command of the guide showed)."""
    run = deployment.run
    if run.nft is None:
        pytest.skip("nft is not installed on this machine: the guide's rules were not loaded")
    target = run.locations["host1"].host.hostport(7402)
    assert run.reachable_from("host2", target)
    assert not run.reachable_from("admin", target)
