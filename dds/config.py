"""TOML configuration for bricks (``dds-brick``) and for a cluster (``dds-admin init``).

Every setting is described exactly once, in the metadata of its attrs field: kind, default,
one line of documentation and validation (range, choices, pattern, extra check).  Loading,
validation and :func:`describe` (the ``--help-config`` dump) are all driven from that.

Bad configuration raises :class:`~dds.errors.ConfigError` naming the file, the setting path
and the problem, for example::

    conf/brick.toml: brick.durabilty: unknown setting (did you mean 'durability'?)
    conf/brick.toml: brick.port: expected an integer from 0 to 65535, got 'abc'
    conf/cluster.toml: cluster.replication: must be at least 1, got 0
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from dds.auth import ROLES, Credentials, secret_env, secrets_from
from dds.errors import ConfigError

__all__ = [
    "BrickConfig", "BrickSection", "BrickClusterSection", "AuthSection", "LimitsSection", "TimeoutsSection",
    "LogSection", "ClusterConfig", "ClusterSection", "BrickEntry", "Setting",
    "load_brick_config", "parse_brick_config", "load_cluster_config", "parse_cluster_config",
    "parse_address", "format_address", "describe",
]

_SETTING = "dds.setting"
_SECTION = "dds.section"
#: The longest any duration setting may be (10 minutes): a typo of a few zeros would
#: otherwise hold locks or fences for days.
MAX_DURATION_MS = 600_000
#: Room for framing and message fields besides the key and the value in one frame.
FRAME_OVERHEAD_BYTES = 65536

# -- the setting description and its checks ----------------------------------------------


@attrs.frozen
class _Ctx:
    """Where a config comes from, for error messages."""

    source: str
    overridden: frozenset[str] = frozenset()

    def error(self, path: str, problem: str) -> ConfigError:
        where = f"{path} (override)" if path in self.overridden else path
        return ConfigError(f"{self.source}: {where}: {problem}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@attrs.frozen
class Setting:
    """One setting: its kind, documentation and validation (kept in attrs field metadata)."""

    kind: str  # "int" | "float" | "str" | "strlist" | "bool"
    doc: str
    required: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    #: Extra check of a well-typed value (of each item, for lists): a problem or None.
    check: Callable[[Any], str | None] | None = None

    def type_text(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            if self.lo is not None and self.hi is not None:
                return f"an integer from {self.lo} to {self.hi}"
            return f"an integer of at least {self.lo}" if self.lo is not None else "an integer"
        if self.kind == "float":
            if self.lo is not None and self.hi is not None:
                return f"a number from {self.lo:g} to {self.hi:g}"
            return f"a number of at least {self.lo:g}" if self.lo is not None else "a number"
        if self.kind == "strlist":
            return "a list of strings"
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return f"a string matching {self.pattern}" if self.pattern else "a string"

    def short_type(self) -> str:
        """A terse type for :func:`describe`."""
        if self.kind == "bool":
            return "boolean"
        if self.kind == "int":
            if self.lo is not None and self.hi is not None:
                return f"integer {self.lo}..{self.hi}"
            return f"integer >= {self.lo}" if self.lo is not None else "integer"
        if self.kind == "float":
            if self.lo is not None and self.hi is not None:
                return f"number {self.lo:g}..{self.hi:g}"
            return f"number >= {self.lo:g}" if self.lo is not None else "number"
        if self.kind == "strlist":
            return "list of strings"
        if self.choices:
            return "|".join(self.choices)
        return f"string {self.pattern}" if self.pattern else "string"

    def convert(self, value: Any, path: str, ctx: _Ctx) -> Any:
        """The validated value to store, or ConfigError."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ctx.error(path, f"expected {self.type_text()}, got {_show(value)}")
            return value
        if self.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ctx.error(path, f"expected {self.type_text()}, got {_show(value)}")
            if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
                if self.hi is None:
                    raise ctx.error(path, f"must be at least {self.lo}, got {value}")
                raise ctx.error(path, f"expected {self.type_text()}, got {value}")
        elif self.kind == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ctx.error(path, f"expected {self.type_text()}, got {_show(value)}")
            if ((self.lo is not None and value < self.lo) or value != value
                    or (self.hi is not None and value > self.hi)):
                raise ctx.error(path, f"expected {self.type_text()}, got {value}")
            value = float(value)
        elif self.kind == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ctx.error(path, f"expected {self.type_text()}, got {_show(value)}")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise ctx.error(path, f"must match {self.pattern}, got {_show(value)}")
        else:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ctx.error(path, f"expected {self.type_text()}, got {_show(value)}")
            for i, item in enumerate(value):
                if self.check is not None and (problem := self.check(item)) is not None:
                    raise ctx.error(f"{path}[{i}]", problem)
            return tuple(value)
        if self.check is not None and (problem := self.check(value)) is not None:
            raise ctx.error(path, problem)
        return value


def _field(spec: Setting, default: Any, secret: bool = False) -> Any:
    meta = {_SETTING: spec}
    if spec.required:
        return attrs.field(metadata=meta)
    return attrs.field(default=default, metadata=meta, repr=not secret)


def int_setting(default: int | None, doc: str, *, lo: int | None = None,
                hi: int | None = None, check: Callable[[Any], str | None] | None = None) -> Any:
    """An integer setting; ``default=None`` makes it required."""
    return _field(Setting("int", doc, default is None, lo, hi, check=check), default)


def float_setting(default: float, doc: str, *, lo: float | None = None,
                  hi: float | None = None) -> Any:
    """A number (TOML integer or float), stored as a float."""
    return _field(Setting("float", doc, False, lo, hi), default)


def bool_setting(default: bool, doc: str) -> Any:
    """A true/false setting."""
    return _field(Setting("bool", doc), default)


def str_setting(default: str | None, doc: str, *, choices: tuple[str, ...] = (),
                pattern: str | None = None, check: Callable[[Any], str | None] | None = None,
                secret: bool = False) -> Any:
    """A string setting; ``default=None`` makes it required."""
    spec = Setting("str", doc, default is None, choices=choices, pattern=pattern, check=check)
    return _field(spec, default, secret)


def list_setting(doc: str, *, check: Callable[[Any], str | None] | None = None) -> Any:
    """A list-of-strings setting (default empty), stored as a tuple."""
    return _field(Setting("strlist", doc, check=check), ())


@attrs.frozen
class _Section:
    cls: type
    doc: str
    many: bool = False  # an array of tables ([[name]])


def section(cls: type, doc: str, many: bool = False) -> Any:
    """A ``[name]`` table (or ``[[name]]`` array of tables) of a top-level config class."""
    return attrs.field(metadata={_SECTION: _Section(cls, doc, many)})


# -- addresses ---------------------------------------------------------------------------

_HOST_RE = re.compile(r"[A-Za-z0-9._-]+")
_V6_RE = re.compile(r"[0-9A-Za-z:.%_-]*:[0-9A-Za-z:.%_-]*")


def _address_problem(text: Any) -> str | None:
    try:
        parse_address(text)
    except ConfigError as e:
        return e.message
    return None


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address (``[::1]:7401``): the form
    :func:`parse_address` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` as ``(host, port)``; ConfigError naming the text."""
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"bad address {_show(text)}: {problem}")

    if not isinstance(text, str):
        raise bad("expected a 'host:port' string")
    if text.startswith("["):
        end = text.find("]")
        host, port_text = text[1:end], text[end + 2:]
        if end < 0 or text[end + 1:end + 2] != ":" or not _V6_RE.fullmatch(host):
            raise bad("expected '[ipv6-address]:port', like '[::1]:7401'")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise bad("expected 'host:port'")
        if ":" in host:
            raise bad("an IPv6 address needs brackets, like '[::1]:7401'")
        if not _HOST_RE.fullmatch(host):
            raise bad(f"invalid host name {host!r}")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise bad(f"port must be an integer from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _power_of_two(value: int) -> str | None:
    return None if value & (value - 1) == 0 else f"must be a power of two, got {value}"


_ID = r"[A-Za-z0-9_-]{1,64}"
_NAME = r"[A-Za-z0-9_.-]{1,64}"

# -- brick configuration -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BrickSection:
    id: str = str_setting(None, "unique brick id (required)", pattern=_ID)
    host: str = str_setting("127.0.0.1", "address to listen on and advertise to peers, "
                            "unless listen or advertise say otherwise", check=_nonempty)
    listen: str = str_setting("", "address the RPC and stream ports bind (\"0.0.0.0\", "
                              "\"::\", a container address); \"\" = host")
    advertise: str = str_setting("", "address other hosts reach this brick at (a name or "
                                 "address; named in copy-stream replies); \"\" = host")
    port: int = int_setting(7401, "RPC port (0 = pick a free port, for dds-admin local up; "
                            "the brick reports the chosen one)", lo=0, hi=65535)
    stream_port: int = int_setting(7402, "copy-stream port: partition copies to recovering "
                                   "and moving bricks (0 = pick a free port, for dds-admin "
                                   "local up)", lo=0, hi=65535)
    data_dir: str = str_setting("", "where partition files and the map live; relative to the "
                                "config file's directory; \"\" = data/<id>")
    durability: str = str_setting("disk", "memory: ack in memory, flush within memory_flush_ms"
                                  "; disk: survives a process crash; fsync: survives power loss",
                                  choices=("memory", "disk", "fsync"))
    cache_entries: int = int_setting(100000, "read cache size in entries (0 disables it)", lo=0)
    memory_flush_ms: int = int_setting(1000, "memory durability: flush to disk within this "
                                       "many milliseconds", lo=1, hi=MAX_DURATION_MS)
    commit_window_ms: int = int_setting(2, "fsync group commit: under load, fdatasync the "
                                        "transaction log at most once per this many "
                                        "milliseconds so batches grow; an idle brick syncs on "
                                        "the next reactor turn (0 = every turn; memory and "
                                        "disk modes write every turn)", lo=0, hi=100)
    http_port: int = int_setting(7403, "/metrics and /healthz HTTP port (0 = pick a free "
                                 "port, for dds-admin local up; -1 = disabled)",
                                 lo=-1, hi=65535)
    http_listen: str = str_setting("", "address the HTTP port binds (metrics are often "
                                   "scraped on another interface); \"\" = listen")
    allow_failpoints: bool = bool_setting(False, "accept 'failpoint' admin requests that "
                                          "crash or pause this brick (test clusters only)")
    full_lease_recovery: bool = bool_setting(False, "recovery fences writes to the source "
                                             "for the whole partition copy (the original "
                                             "DDS behaviour) instead of only the delta")
    copy_rate_mb_s: int = int_setting(0, "bandwidth limit of each recovery copy this brick "
                                      "serves, MB/s; 0 = unlimited", lo=0, hi=100_000)
    move_rate_mb_s: int = int_setting(40, "bandwidth limit of each target's copy of a "
                                      "partition move (dds-admin move, rebalance, "
                                      "add-brick, remove-brick) this brick serves, MB/s, "
                                      "unless the move gives --rate; 0 = unlimited",
                                      lo=0, hi=100_000)
    min_free_mb: int = int_setting(64, "free space (MiB) the data directory's filesystem "
                                   "must keep: below it the brick refuses writes with "
                                   "StorageFull and asks its RGs to exclude it; it "
                                   "re-syncs and serves again once twice as much (at "
                                   "least 1 MiB more) is free", lo=0, hi=1 << 30)
    disk_check_ms: int = int_setting(1000, "how often the brick looks at its free space",
                                     lo=50, hi=MAX_DURATION_MS)
    recover_on_start: bool = bool_setting(True, "a restarted brick re-syncs its partitions "
                                          "from the other members before serving them")
    quarantine_hours: float = float_setting(24.0, "a replica no RG lists any more (and no "
                                            "finished move, split or merge of this brick "
                                            "accounts for) is moved to data_dir/quarantine "
                                            "and deleted after this many hours; dds-admin "
                                            "repair can restore it meanwhile (fractions "
                                            "allowed)", lo=0.0, hi=24.0 * 366)
    scrub_mb_s: float = float_setting(4.0, "background scrubber: verify every stored row "
                                      "against its checksum at this many MB/s (repairing a "
                                      "damaged one from the RG); 0 = off (rows are still "
                                      "verified on every read)", lo=0.0, hi=10_000.0)
    change_max_skew_ms: int = int_setting(1000, "clock skew allowed between bricks when "
                                          "a change stream position made by another "
                                          "replica is translated by time (more: more "
                                          "changes delivered twice, never fewer)",
                                          lo=0, hi=MAX_DURATION_MS)
    unsafe_ignore_read_lease: bool = bool_setting(False, "DEBUG ONLY: serve reads without "
                                                  "a valid membership lease; breaks "
                                                  "linearizability (proves the pause test "
                                                  "can fail)")


@attrs.frozen(kw_only=True)
class BrickClusterSection:
    name: str = str_setting("dds", "cluster name; the handshake refuses peers of another "
                            "cluster", pattern=_NAME)
    secret: str = str_setting("", "no longer accepted (one secret was every role's): use "
                              "the [auth] section", secret=True)
    secret_file: str = str_setting("", "no longer accepted: use the [auth] section")
    seeds: tuple[str, ...] = list_setting("\"host:port\" of other bricks to gossip the map "
                                          "with", check=_address_problem)


@attrs.frozen(kw_only=True)
class AuthSection:
    mode: str = str_setting("secret", "secret: one shared secret per role (HMAC handshake); "
                            "tls: mutual TLS with certificates from the cluster CA "
                            "(dds-admin certs)", choices=("secret", "tls"))
    brick_secret_file: str = str_setting("", "secret mode: file holding the brick (peer) "
                                         "role's secret, mode 0600, >= 32 bytes; "
                                         "DDS_BRICK_SECRET overrides it")
    admin_secret_file: str = str_setting("", "secret mode: file holding the admin role's "
                                         "secret; DDS_ADMIN_SECRET overrides it")
    client_secret_file: str = str_setting("", "secret mode: file holding the client role's "
                                          "secret; DDS_CLIENT_SECRET overrides it")
    ca_file: str = str_setting("", "tls mode: the cluster CA certificate (PEM)")
    cert_file: str = str_setting("", "tls mode: this brick's certificate (role brick, PEM)")
    key_file: str = str_setting("", "tls mode: this brick's private key (PEM, mode 0600)")
    handshake_timeout_ms: int = int_setting(5000, "a connection that has not authenticated "
                                            "within this long is closed", lo=100, hi=60_000)
    max_unauthenticated: int = int_setting(256, "most connections still authenticating at "
                                           "once; more are closed at once", lo=1, hi=100_000)
    max_unauthenticated_per_source: int = int_setting(32, "most connections still "
                                                      "authenticating at once from one "
                                                      "address", lo=1, hi=100_000)
    cert_warn_days: int = int_setting(30, "tls mode: warn this many days before this "
                                      "brick's certificate expires", lo=0, hi=3650)


@attrs.frozen(kw_only=True)
class LimitsSection:
    max_frame_bytes: int = int_setting(16777216, "largest wire frame accepted, bytes",
                                       lo=1024, hi=2**31 - 1)
    max_key_bytes: int = int_setting(1024, "largest key accepted, bytes", lo=1)
    max_value_bytes: int = int_setting(1048576, "largest value accepted, bytes", lo=1)
    max_unsent_bytes: int = int_setting(16777216, "most reply bytes waiting to be sent to "
                                        "one connection before the brick stops reading "
                                        "its requests (a peer that reads no replies)",
                                        lo=65536, hi=2**31 - 1)


@attrs.frozen(kw_only=True)
class TimeoutsSection:
    txn_deadline_ms: int = int_setting(5000, "how long a prepared transaction is held before "
                                       "the participant runs termination", lo=1,
                                       hi=MAX_DURATION_MS)
    max_txn_deadline_ms: int = int_setting(30000, "the longest a participant holds a prepared "
                                           "transaction before termination, whatever "
                                           "deadline the coordinator asks for",
                                           lo=1, hi=600_000)
    lock_wait_ms: int = int_setting(2000, "how long an older transaction waits for a key "
                                    "lock (wait-die)", lo=1, hi=MAX_DURATION_MS)
    read_wait_ms: int = int_setting(5000, "how long a read waits for a prepared key's "
                                    "outcome", lo=1, hi=MAX_DURATION_MS)
    gossip_interval_ms: int = int_setting(1000, "interval between map gossip rounds with a "
                                          "random peer (tests set an hour to keep "
                                          "gossip out of the way)", lo=1, hi=86_400_000)
    lease_ms: int = int_setting(2000, "membership lease length; renewed every third of it, "
                                "and an unreachable member is excluded only after it",
                                lo=30, hi=600_000)
    lease_drift_percent: int = int_setting(10, "clock-rate margin: a lease is trusted for "
                                           "this much less than its length", lo=0, hi=90)
    suspect_check_ms: int = int_setting(500, "how long a member tries to reach a suspect "
                                        "itself before voting to exclude it", lo=1,
                                        hi=MAX_DURATION_MS)
    copy_fence_ms: int = int_setting(10000, "longest a recovery source fences writes while "
                                     "waiting for the recovering brick to finish", lo=1,
                                     hi=MAX_DURATION_MS)


@attrs.frozen(kw_only=True)
class LogSection:
    level: str = str_setting("info", "lowest level logged",
                             choices=("debug", "info", "warn", "error"))
    format: str = str_setting("json", "json: one JSON object per line; text: human-readable",
                              choices=("json", "text"))
    file: str = str_setting("", "log file, relative to the config file's directory "
                            "(\"\" = standard output)")


@attrs.frozen(kw_only=True)
class BrickConfig:
    """Brick configuration (dds-brick --config FILE)."""

    brick: BrickSection = section(BrickSection, "the brick itself")
    cluster: BrickClusterSection = section(BrickClusterSection, "the cluster it belongs to")
    auth: AuthSection = section(AuthSection, "authentication: roles, secrets, TLS")
    limits: LimitsSection = section(LimitsSection, "size limits")
    timeouts: TimeoutsSection = section(TimeoutsSection, "timeouts, milliseconds")
    log: LogSection = section(LogSection, "logging")
    #: What this brick presents (role brick) and verifies (every role).
    credentials: Credentials = attrs.field(repr=False)
    #: brick.data_dir resolved against the config file's directory.
    data_dir: Path
    #: log.file resolved against the config file's directory; None = standard output.
    log_file: Path | None = None
    #: Where the configuration came from (file name or "<config>").
    source: str = "<config>"

    @property
    def listen_host(self) -> str:
        return self.brick.listen or self.brick.host

    @property
    def advertise_host(self) -> str:
        return self.brick.advertise or self.brick.host

    @property
    def http_host(self) -> str:
        return self.brick.http_listen or self.listen_host


# -- cluster configuration ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ClusterSection:
    name: str = str_setting("dds", "cluster name", pattern=_NAME)
    replication: int = int_setting(3, "replicas per replica group", lo=1)
    partitions: int = int_setting(16, "initial number of partitions (a power of two)",
                                  lo=1, hi=65536, check=_power_of_two)
    max_key_bytes: int = int_setting(1024, "largest key accepted, bytes", lo=1)
    max_value_bytes: int = int_setting(1048576, "largest value accepted, bytes", lo=1)


@attrs.frozen(kw_only=True)
class BrickEntry:
    id: str = str_setting(None, "brick id (required)", pattern=_ID)
    address: str = str_setting(None, "\"host:port\" the brick listens on (required)",
                               check=_address_problem)
    host: str = str_setting("", "failure domain (machine) name; \"\" = the address's host; "
                            "no replica group gets two replicas on one host when avoidable")


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """Cluster configuration (dds-admin init)."""

    cluster: ClusterSection = section(ClusterSection, "the cluster")
    bricks: tuple[BrickEntry, ...] = section(BrickEntry, "one table per brick", many=True)
    source: str = "<config>"


# -- generic parsing ---------------------------------------------------------------------


def _parse_table(cls: type, data: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(data, Mapping):
        raise ctx.error(path, f"expected a table, got {_show(data)}")
    fields = [f for f in attrs.fields(cls) if _SETTING in f.metadata]
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            raise ctx.error(f"{path}.{key}", "unknown setting" + _suggest(key, names))
    values: dict[str, Any] = {}
    for f in fields:
        spec: Setting = f.metadata[_SETTING]
        if f.name in data:
            values[f.name] = spec.convert(data[f.name], f"{path}.{f.name}", ctx)
        elif spec.required:
            raise ctx.error(f"{path}.{f.name}", "required setting is missing")
    return cls(**values)


def _parse_sections(cls: type, data: Mapping[str, Any], ctx: _Ctx) -> dict[str, Any]:
    sections = {f.name: f.metadata[_SECTION] for f in attrs.fields(cls) if _SECTION in f.metadata}
    known = list(sections)
    for key, value in data.items():
        if key not in sections:
            what = "unknown section" if isinstance(value, (Mapping, list)) else \
                "setting outside any section"
            raise ctx.error(key, what + _suggest(key, known))
    out: dict[str, Any] = {}
    for name, sec in sections.items():
        if not sec.many:
            out[name] = _parse_table(sec.cls, data.get(name, {}), name, ctx)
            continue
        items = data.get(name, [])
        if not isinstance(items, list):
            raise ctx.error(name, f"expected an array of tables ([[{name}]]), got {_show(items)}")
        out[name] = tuple(_parse_table(sec.cls, item, f"{name}[{i}]", ctx)
                          for i, item in enumerate(items))
    return out


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any],
                     source: str) -> tuple[dict[str, Any], frozenset[str]]:
    out = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        sec, dot, name = key.partition(".")
        if not dot or not sec or not name or "." in name:
            raise ConfigError(f"{source}: override {key!r}: expected 'section.setting'")
        table = out.setdefault(sec, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: override {key!r}: {sec} is not a table")
        table[name] = value
    return out, frozenset(overrides)


def _resolve(base_dir: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base_dir / p


def _credentials(cfg: Mapping[str, Any], base_dir: Path, env: Mapping[str, str],
                 ctx: _Ctx) -> Credentials:
    cluster: BrickClusterSection = cfg["cluster"]
    auth: AuthSection = cfg["auth"]
    for name in ("secret", "secret_file"):
        if getattr(cluster, name):
            raise ctx.error(f"cluster.{name}", "one secret for every role is no longer "
                            "accepted (a client could act as an admin or a brick): put one "
                            "secret per role in auth.brick_secret_file, "
                            "auth.admin_secret_file and auth.client_secret_file, or use "
                            "auth.mode = \"tls\"")
    if auth.mode == "tls":
        from dds.tls import load_tls_files
        paths = {}
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(auth, name)
            if not value:
                raise ctx.error(f"auth.{name}", "required when auth.mode is \"tls\"")
            paths[name] = _resolve(base_dir, value)
        try:
            files = load_tls_files(paths["ca_file"], paths["cert_file"], paths["key_file"],
                                   cluster=cluster.name, role="brick")
        except ConfigError as e:
            raise ConfigError(f"{ctx.source}: auth: {e.message}") from None
        return Credentials("brick", {}, files)
    files_by_role: dict[str, Path | None] = {}
    where: dict[str, str] = {}
    for role in ROLES:
        value = getattr(auth, f"{role}_secret_file")
        files_by_role[role] = _resolve(base_dir, value) if value else None
        where[role] = f"{ctx.source}: auth.{role}_secret_file"
    try:
        secrets = secrets_from(env, files_by_role, where)
    except ConfigError as e:
        raise ConfigError(e.message) from None
    missing = [r for r in ROLES if r not in secrets]
    if missing:
        hint = (" (DDS_SECRET, one secret for every role, is no longer read)"
                if env.get("DDS_SECRET") else "")
        raise ctx.error(f"auth.{missing[0]}_secret_file",
                        f"no {missing[0]} secret: a brick needs one secret per role "
                        f"({', '.join(ROLES)}) in auth.<role>_secret_file or "
                        f"{secret_env(missing[0])}{hint}")
    if len(set(secrets.values())) < len(ROLES):
        raise ctx.error("auth", "the roles' secrets must differ: with one secret for two "
                        "roles, either role can act as the other")
    return Credentials("brick", secrets)


# -- public API --------------------------------------------------------------------------


def parse_brick_config(data: Mapping[str, Any], source: str = "<config>",
                       base_dir: Path = Path("."), env: Mapping[str, str] = os.environ,
                       overrides: Mapping[str, Any] | None = None) -> BrickConfig:
    """Validate parsed TOML (plus dotted ``overrides``) as a brick configuration."""
    data, overridden = _apply_overrides(data, overrides or {}, source)
    ctx = _Ctx(source, overridden)
    sections = _parse_sections(BrickConfig, data, ctx)
    brick: BrickSection = sections["brick"]
    limits: LimitsSection = sections["limits"]
    log: LogSection = sections["log"]
    if limits.max_key_bytes + limits.max_value_bytes + FRAME_OVERHEAD_BYTES > \
            limits.max_frame_bytes:
        raise ctx.error("limits.max_frame_bytes", f"must exceed max_key_bytes + max_value_bytes"
                        f" by at least {FRAME_OVERHEAD_BYTES}, got {limits.max_frame_bytes}")
    ports = {"brick.port": brick.port, "brick.stream_port": brick.stream_port,
             "brick.http_port": brick.http_port}
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port > 0 and port in seen:
            raise ctx.error(name, f"must differ from {seen[port]} ({port})")
        seen.setdefault(port, name)
    return BrickConfig(
        **sections,
        credentials=_credentials(sections, base_dir, env, ctx),
        data_dir=_resolve(base_dir, brick.data_dir or f"data/{brick.id}"),
        log_file=_resolve(base_dir, log.file) if log.file else None,
        source=source,
    )


def load_brick_config(path: str | Path, env: Mapping[str, str] = os.environ,
                      overrides: Mapping[str, Any] | None = None) -> BrickConfig:
    """Read and validate a brick configuration file."""
    return parse_brick_config(_read_toml(path), str(path), Path(path).absolute().parent,
                              env, overrides)


def parse_cluster_config(data: Mapping[str, Any], source: str = "<config>") -> ClusterConfig:
    """Validate parsed TOML as a cluster configuration."""
    ctx = _Ctx(source)
    sections = _parse_sections(ClusterConfig, data, ctx)
    cluster: ClusterSection = sections["cluster"]
    entries: tuple[BrickEntry, ...] = sections["bricks"]
    if not entries:
        raise ctx.error("bricks", "at least one [[bricks]] entry is required")
    ids: dict[str, int] = {}
    addresses: dict[tuple[str, int], int] = {}
    resolved = []
    for i, entry in enumerate(entries):
        if entry.id in ids:
            raise ctx.error(f"bricks[{i}].id", f"duplicate brick id {entry.id!r} "
                            f"(also bricks[{ids[entry.id]}])")
        host, port = parse_address(entry.address)
        if (host.lower(), port) in addresses:
            raise ctx.error(f"bricks[{i}].address", f"duplicate address {entry.address!r} "
                            f"(also bricks[{addresses[host.lower(), port]}])")
        ids[entry.id] = i
        addresses[host.lower(), port] = i
        resolved.append(attrs.evolve(entry, host=entry.host or host))
    if cluster.replication > len(entries):
        raise ctx.error("cluster.replication", f"{cluster.replication} replicas need at least "
                        f"as many bricks, but only {len(entries)} are listed")
    return ClusterConfig(cluster=cluster, bricks=tuple(resolved), source=source)


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster configuration file."""
    return parse_cluster_config(_read_toml(path), str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


def describe(cls: type) -> str:
    """The documented settings of ``BrickConfig`` or ``ClusterConfig``, as commented TOML."""
    lines = [f"# {(cls.__doc__ or cls.__name__).strip().splitlines()[0]}"]
    for f in attrs.fields(cls):
        sec = f.metadata.get(_SECTION)
        if sec is None:
            continue
        header = f"[[{f.name}]]" if sec.many else f"[{f.name}]"
        lines += ["", f"{header}  # {sec.doc}"]
        rows = []
        for sf in attrs.fields(sec.cls):
            spec: Setting = sf.metadata[_SETTING]
            value = "<required>" if spec.required else _toml_value(sf.default)
            rows.append((f"{sf.name} = {value}", f"{spec.doc} [{spec.short_type()}]"))
        width = max(len(r[0]) for r in rows)
        lines += [f"{left:<{width}}  # {right}" for left, right in rows]
    return "\n".join(lines) + "\n"
