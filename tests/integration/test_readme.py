"""The README holds: its commands and its library snippets run on a real local cluster,
and the README, ``conf/`` and the operator docs name only commands and options that
exist.

Commands are the README's indented lines that start with ``dds-admin``, ``dds-brick``
(or ``.venv/bin/…``) or ``make``.  Each is either run here, against a 3-brick local
cluster in a temporary directory (``local up --dir <tmp>/.dds-local``: ``--local`` and
the default directory then find it), or listed in ``NOT_RUN`` with the reason; a command
in neither fails the test, so a new one is not silently left out.  ``bench`` gets short
phases (``BENCH_SHORT``).  The library snippets (```python blocks) run with the local
cluster's seeds and client secret in place of the README's placeholders.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from dds.tools.admin import main as admin_main

from tests.harness.local import kill_leftovers, recorded

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
COMMAND_TIMEOUT_S = 120
#: Appended to ``bench``: short phases, few keys (the README's bench takes ~20 s).
BENCH_SHORT = ["--seconds", "0.5", "--keys", "200"]
#: Commands of the README not run here, and why (matched on their first words).
NOT_RUN = {
    "make run": "sets up .venv and a 6-brick cluster in the repository (this test's "
                "cluster stands in for it)",
    "make test": "the whole suite, this test included",
    "make verify": "minutes of fault runs",
    "make soak": "an hour of fault runs",
    "make sim": "minutes of simulation (the suite runs a short sweep itself)",
    "dds-brick --config": "a brick on the fixed ports of conf/brick.toml",
    "dds-admin init": "bricks at conf/cluster.toml's fixed addresses (local up inits)",
    "dds-admin status --seeds": "the fixed address of conf/brick.toml; `status --local` "
                                "runs",
}


def readme_commands(text: str) -> list[str]:
    """The README's indented command lines (comments cut), in order."""
    out = []
    for line in text.splitlines():
        if not line.startswith("    ") or line.startswith("     "):
            continue
        command = line.strip().split("  #")[0].strip()
        command = re.sub(r"^\.venv/bin/", "", command)
        if re.match(r"(dds-admin|dds-brick|make)\b", command):
            out.append(command)
    return out


def readme_snippets(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


@pytest.fixture
def cluster_home(tmp_path: Path) -> Iterator[Path]:
    """A directory whose ``.dds-local`` holds a running 3-brick local cluster."""
    home = tmp_path / "home"
    home.mkdir()
    up = run_admin(home, "local", "up", "--bricks", "3", "--replication", "3",
                   "--partitions", "4")
    cluster_dir = home / ".dds-local"
    started = recorded(cluster_dir)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield home
    finally:
        if recorded(cluster_dir):
            run_admin(home, "local", "down")
        kill_leftovers(started)


def run_admin(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "dds-admin"), *args], cwd)


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDS_")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def test_readme_commands_run_on_a_local_cluster(cluster_home: Path) -> None:
    commands = readme_commands(README.read_text())
    assert any(c.startswith("dds-admin status") for c in commands), commands
    ran = []
    for command in commands:
        skipped = next((why for prefix, why in NOT_RUN.items()
                        if command.startswith(prefix)), None)
        if skipped is not None:
            continue
        words = command.split()
        if words[0] not in ("dds-admin", "dds-brick"):
            raise AssertionError(f"README command {command!r} is neither run by this test "
                                 "nor listed in NOT_RUN")
        argv = [str(BIN / words[0]), *words[1:]]
        if words[:2] == ["dds-admin", "bench"]:
            argv += BENCH_SHORT
        result = run(argv, cluster_home)
        assert result.returncode == 0, (f"README command {command!r} exited "
                                        f"{result.returncode}:\n{result.stdout}\n"
                                        f"{result.stderr}")
        ran.append(command)
    assert [c.split()[1] for c in ran if c.startswith("dds-admin")] == [
        "status", "bench", "local"], ran
    assert not recorded(cluster_home / ".dds-local")      # `local down` stopped it


def _runnable(snippet: str, seed: str, secret: bytes) -> str:
    """A README snippet made a script for the local cluster: its seeds and credentials
    replaced, its top-level ``await``s inside a coroutine that a loop runs."""
    code = re.sub(r'\["10\.0\.0\.1:7401"(?:, "10\.0\.0\.2:7401")?\]', repr([seed]), snippet)
    code = re.sub(r'tls=\{[^}]*\}', f"secret={secret!r}", code)
    code = code.replace('secret=b"<client secret>"', f"secret={secret!r}")
    assert "10.0.0." not in code and "<client secret>" not in code, code
    if "DDSClient.connect(reactor" in code:
        body = textwrap.indent(code, "    ")
        return ("from twisted.internet import task\n"
                "from twisted.internet.defer import Deferred\n\n"
                f"async def main(reactor):\n{body}\n    await client.close()\n\n"
                "task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))\n")
    if "async with" in code:
        body = textwrap.indent(code, "    ")
        return f"import asyncio\n\nasync def main():\n{body}\n\nasyncio.run(main())\n"
    return code


def test_readme_library_snippets_run_on_a_local_cluster(cluster_home: Path) -> None:
    snippets = readme_snippets(README.read_text())
    assert len(snippets) == 3, "the Twisted, asyncio and blocking snippets"
    secret = (cluster_home / ".dds-local" / "secrets" / "client").read_text().strip()
    status = run_admin(cluster_home, "status", "--local", "--json")
    assert status.returncode == 0, status.stderr
    seed = json.loads(status.stdout)["bricks"][0]["address"]
    for i, snippet in enumerate(snippets):
        script = cluster_home / f"snippet{i}.py"
        script.write_text(_runnable(snippet, seed, secret.encode()))
        result = run([sys.executable, str(script)], cluster_home)
        assert result.returncode == 0, (f"README snippet {i + 1} failed:\n"
                                        f"{script.read_text()}\n{result.stderr}")


# -- commands named in the README, conf/ and the operator docs exist -----------------------

MENTION = re.compile(r"\bdds-admin((?: +[a-z][a-z-]*)+)((?: +[^\s`|]+)*)")


def _admin_mentions(text: str) -> list[tuple[list[str], list[str]]]:
    """``(command words, --options)`` of each ``dds-admin …`` in ``text``: the command
    words are those click knows as (sub)commands; options are the ``--x`` that follow
    on the same code span or line."""
    out = []
    for span in re.findall(r"`([^`]*dds-admin[^`]*)`|^ {4}(.*dds-admin.*)$", text,
                           re.MULTILINE):
        for m in MENTION.finditer((span[0] or span[1]).split(" #")[0]):
            words = (m.group(1) + m.group(2)).split()
            out.append((words, [w.split("=")[0] for w in words if w.startswith("--")]))
    return out


def _resolve(words: list[str]) -> tuple[click.Command, list[str]] | str:
    """The click command ``words`` name (and the path), or what is wrong."""
    cmd: click.Command = admin_main
    path: list[str] = []
    for w in words:
        if not isinstance(cmd, click.Group) or w.startswith("-"):
            break
        sub = cmd.get_command(click.Context(cmd), w)
        if sub is None:
            if not path:
                return f"no command `dds-admin {w}`"
            break
        cmd, path = sub, path + [w]
    return cmd, path


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


@pytest.mark.parametrize("doc", ["README.md", "conf/cluster.toml", "conf/brick.toml",
                                 "docs/operations.md", "docs/deploy.md"])
def test_docs_name_only_dds_admin_commands_and_options_that_exist(doc: str) -> None:
    problems = []
    for words, options in _admin_mentions((REPO / doc).read_text()):
        found = _resolve(words)
        if isinstance(found, str):
            problems.append(f"{found} ({' '.join(words)})")
            continue
        cmd, path = found
        missing = [o for o in options if o not in _options(cmd)]
        if missing:
            problems.append(f"`dds-admin {' '.join(path)}` has no {', '.join(missing)}")
    assert not problems, f"{doc}:\n" + "\n".join(problems)
