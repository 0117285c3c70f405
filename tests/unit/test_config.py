"""Tests of dds.config: loading, defaults, validation and error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import re

import pytest

from dds.config import (
    BrickConfig, ClusterConfig, describe, load_brick_config, load_cluster_config,
    parse_address, parse_brick_config, parse_cluster_config,
)
from dds.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
#: One secret per role, each long enough (DESIGN §10).
ENV = {f"DDS_{role.upper()}_SECRET": f"{role}-secret-".ljust(40, "x")
       for role in ("brick", "admin", "client")}


def brick(**sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"brick": {"id": "b1"}, "cluster": {}}
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return data


def cluster(n: int = 3, **settings: Any) -> dict[str, Any]:
    return {
        "cluster": settings,
        "bricks": [{"id": f"b{i}", "address": f"127.0.0.1:{7400 + i}"} for i in range(1, n + 1)],
    }


def write(tmp_path: Path, text: str, name: str = "brick.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- example files -----------------------------------------------------------------------

def test_example_brick_toml_loads() -> None:
    cfg = load_brick_config(CONF / "brick.toml", env=ENV)
    assert cfg.brick.id == "b1"
    assert cfg.data_dir == CONF / "data" / "b1"


def test_example_cluster_toml_loads() -> None:
    cfg = load_cluster_config(CONF / "cluster.toml")
    assert [b.id for b in cfg.bricks] == [f"b{i}" for i in range(1, 7)]
    assert [b.address for b in cfg.bricks] == [f"127.0.0.1:{7400 + i}" for i in range(1, 7)]
    assert (cfg.cluster.replication, cfg.cluster.partitions) == (3, 16)


@pytest.mark.parametrize("cls, name", [(BrickConfig, "brick.toml"), (ClusterConfig, "cluster.toml")])
def test_example_files_mention_every_documented_setting(cls: type, name: str) -> None:
    text = (CONF / name).read_text()
    for line in describe(cls).splitlines():
        if line and not line.startswith("#"):
            key = line.split()[0]
            assert key in text, f"{name} lacks {key}"


# -- defaults and derived values ---------------------------------------------------------

def test_defaults_apply_to_missing_settings() -> None:
    cfg = parse_brick_config(brick(), env=ENV)
    assert cfg.brick.port == 7401
    assert cfg.brick.durability == "disk"
    assert cfg.cluster.name == "dds"
    assert cfg.cluster.seeds == ()
    assert cfg.limits.max_frame_bytes == 16777216
    assert cfg.timeouts.txn_deadline_ms == 5000
    assert cfg.log.level == "info"
    assert cfg.log_file is None


def test_default_data_dir_is_named_after_the_brick(tmp_path: Path) -> None:
    cfg = parse_brick_config(brick(), base_dir=tmp_path, env=ENV)
    assert cfg.data_dir == tmp_path / "data" / "b1"


def test_relative_data_dir_resolves_against_config_directory(tmp_path: Path) -> None:
    path = write(tmp_path, '[brick]\nid = "b1"\ndata_dir = "d/b1"\n')
    cfg = load_brick_config(path, env=ENV)
    assert cfg.data_dir == tmp_path / "d" / "b1"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    cfg = parse_brick_config(brick(brick={"data_dir": "/srv/dds"}), base_dir=tmp_path, env=ENV)
    assert cfg.data_dir == Path("/srv/dds")


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    path = write(tmp_path, '[brick]\nid = "b1"\nport = 7401\n')
    cfg = load_brick_config(path, env=ENV, overrides={"brick.port": 0, "log.level": "debug"})
    assert cfg.brick.port == 0
    assert cfg.log.level == "debug"


def test_bad_override_value_is_named_as_override() -> None:
    with pytest.raises(ConfigError, match=r"brick\.port \(override\): expected an integer"):
        parse_brick_config(brick(), env={}, overrides={"brick.port": "x"})


# -- rejected settings -------------------------------------------------------------------

def test_unknown_setting_rejected_with_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, '[brick]\nid = "b1"\ndurabilty = "disk"\n')
    with pytest.raises(ConfigError) as info:
        load_brick_config(path, env=ENV)
    assert str(info.value) == (
        f"{path}: brick.durabilty: unknown setting (did you mean 'durability'?)")


def test_unknown_section_rejected() -> None:
    with pytest.raises(ConfigError, match=r"<config>: limit: unknown section \(did you mean 'limits'\?\)"):
        parse_brick_config(brick(limit={"max_key_bytes": 1}), env=ENV)


def test_setting_outside_any_section_rejected() -> None:
    with pytest.raises(ConfigError, match="port: setting outside any section"):
        parse_brick_config({**brick(), "port": 1}, env=ENV)


def test_wrong_type_rejected_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"brick\.port: expected an integer from 0 to 65535, got 'abc'"):
        parse_brick_config(brick(brick={"port": "abc"}), env=ENV)


def test_boolean_is_not_an_integer() -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_key_bytes: expected an integer"):
        parse_brick_config(brick(limits={"max_key_bytes": True}), env=ENV)


def test_out_of_range_port_rejected() -> None:
    with pytest.raises(ConfigError, match=r"brick\.port: expected an integer from 0 to 65535, got 70000"):
        parse_brick_config(brick(brick={"port": 70000}), env=ENV)


def test_bad_durability_rejected_listing_choices() -> None:
    with pytest.raises(ConfigError, match=r"brick\.durability: expected one of 'memory', 'disk', 'fsync', got 'ssd'"):
        parse_brick_config(brick(brick={"durability": "ssd"}), env=ENV)


def test_bad_brick_id_rejected() -> None:
    with pytest.raises(ConfigError, match=r"brick\.id: must match"):
        parse_brick_config(brick(brick={"id": "b 1"}), env=ENV)


def test_missing_brick_id_rejected() -> None:
    with pytest.raises(ConfigError, match=r"brick\.id: required setting is missing"):
        parse_brick_config({"cluster": {}}, env=ENV)


def test_bad_seed_address_rejected_with_index() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.seeds\[1\]: bad address 'nope'"):
        parse_brick_config(brick(cluster={"seeds": ["127.0.0.1:7402", "nope"]}), env=ENV)


def test_frame_limit_must_fit_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_frame_bytes: must exceed"):
        parse_brick_config(brick(limits={"max_frame_bytes": 1048576}), env=ENV)


# -- files -------------------------------------------------------------------------------

def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: no such file")):
        load_brick_config(path, env=ENV)


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[brick]\nid = "b1"\nport = \n')
    with pytest.raises(ConfigError) as info:
        load_brick_config(path, env=ENV)
    assert str(info.value).startswith(f"{path}: invalid TOML: ")
    assert "line 3" in str(info.value)


# -- secrets per role (DESIGN §10) -------------------------------------------------------

def _secret_files(tmp_path: Path, mode: int = 0o600, **texts: str) -> dict[str, str]:
    """Secret files for every role (texts override), and the [auth] settings naming them."""
    auth = {}
    for role in ("brick", "admin", "client"):
        path = tmp_path / f"{role}.secret"
        path.write_text(texts.get(role, f"{role}-from-file-".ljust(40, "f")) + "\n")
        path.chmod(mode)
        auth[f"{role}_secret_file"] = path.name
    return auth


def test_each_role_gets_its_own_secret_from_its_file(tmp_path: Path) -> None:
    cfg = parse_brick_config(brick(auth=_secret_files(tmp_path)), base_dir=tmp_path, env={})
    assert cfg.credentials.role == "brick"
    assert cfg.credentials.secret("client") == b"client-from-file-".ljust(40, b"f")
    assert cfg.credentials.secret("admin") == b"admin-from-file-".ljust(40, b"f")


def test_a_role_secret_in_the_environment_beats_its_file(tmp_path: Path) -> None:
    env = {"DDS_ADMIN_SECRET": "admin-from-env-".ljust(40, "e")}
    cfg = parse_brick_config(brick(auth=_secret_files(tmp_path)), base_dir=tmp_path, env=env)
    assert cfg.credentials.secret("admin") == b"admin-from-env-".ljust(40, b"e")
    assert cfg.credentials.secret("brick") == b"brick-from-file-".ljust(40, b"f")


def test_a_missing_role_secret_is_named() -> None:
    env = {k: v for k, v in ENV.items() if k != "DDS_CLIENT_SECRET"}
    with pytest.raises(ConfigError, match=r"auth\.client_secret_file: no client secret"):
        parse_brick_config(brick(), env=env)


def test_a_secret_shorter_than_32_bytes_is_refused(tmp_path: Path) -> None:
    auth = _secret_files(tmp_path, admin="short")
    with pytest.raises(ConfigError, match=r"auth\.admin_secret_file.*at least 32 bytes, got 5"):
        parse_brick_config(brick(auth=auth), base_dir=tmp_path, env={})


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    auth = _secret_files(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match=r"accessible by group or others \(mode 0644\); "
                                          r"chmod 600 it"):
        parse_brick_config(brick(auth=auth), base_dir=tmp_path, env={})


def test_one_secret_for_two_roles_is_refused() -> None:
    env = {**ENV, "DDS_CLIENT_SECRET": ENV["DDS_ADMIN_SECRET"]}
    with pytest.raises(ConfigError, match="the roles' secrets must differ"):
        parse_brick_config(brick(), env=env)


def test_the_old_single_cluster_secret_is_refused_with_the_way_forward() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.secret: one secret for every role is "
                                          r"no longer accepted.*auth\.brick_secret_file"):
        parse_brick_config(brick(cluster={"secret": "x" * 40}), env=ENV)


def test_an_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.brick_secret_file: cannot read"):
        parse_brick_config(brick(auth={"brick_secret_file": "missing"}), base_dir=tmp_path,
                           env={})


def test_secrets_are_not_in_repr() -> None:
    cfg = parse_brick_config(brick(), env=ENV)
    assert all(v not in repr(cfg) for v in ENV.values())


def test_tls_mode_needs_its_files() -> None:
    with pytest.raises(ConfigError, match=r"auth\.ca_file: required when auth\.mode is"):
        parse_brick_config(brick(auth={"mode": "tls"}), env=ENV)


def test_listen_and_advertise_default_to_host() -> None:
    cfg = parse_brick_config(brick(brick={"host": "10.0.0.5"}), env=ENV)
    assert (cfg.listen_host, cfg.advertise_host, cfg.http_host) == ("10.0.0.5",) * 3
    cfg = parse_brick_config(brick(brick={"host": "h", "listen": "::", "advertise": "db1",
                                          "http_listen": "127.0.0.1"}), env=ENV)
    assert (cfg.listen_host, cfg.advertise_host, cfg.http_host) == ("::", "db1", "127.0.0.1")


def test_two_ports_of_one_brick_must_differ() -> None:
    with pytest.raises(ConfigError, match=r"brick\.stream_port: must differ from brick\.port"):
        parse_brick_config(brick(brick={"port": 7500, "stream_port": 7500}), env=ENV)


# -- cluster configuration ---------------------------------------------------------------

def test_cluster_defaults_and_host_from_address() -> None:
    cfg = parse_cluster_config(cluster(3))
    assert (cfg.cluster.replication, cfg.cluster.partitions) == (3, 16)
    assert cfg.bricks[0].host == "127.0.0.1"


def test_replication_above_brick_count_rejected() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.replication: 4 replicas need at least as many bricks, but only 3"):
        parse_cluster_config(cluster(3, replication=4))


def test_replication_zero_rejected() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.replication: must be at least 1"):
        parse_cluster_config(cluster(3, replication=0))


def test_duplicate_brick_ids_rejected() -> None:
    data = cluster(3)
    data["bricks"][2]["id"] = "b1"
    with pytest.raises(ConfigError, match=r"bricks\[2\]\.id: duplicate brick id 'b1' \(also bricks\[0\]\)"):
        parse_cluster_config(data)


def test_duplicate_addresses_rejected() -> None:
    data = cluster(3)
    data["bricks"][1]["address"] = "127.0.0.1:7401"
    with pytest.raises(ConfigError, match=r"bricks\[1\]\.address: duplicate address"):
        parse_cluster_config(data)


def test_bad_brick_address_rejected() -> None:
    data = cluster(3)
    data["bricks"][0]["address"] = "127.0.0.1"
    with pytest.raises(ConfigError, match=r"bricks\[0\]\.address: bad address '127.0.0.1'"):
        parse_cluster_config(data)


def test_partitions_not_power_of_two_rejected() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.partitions: must be a power of two, got 12"):
        parse_cluster_config(cluster(3, partitions=12))


def test_cluster_without_bricks_rejected() -> None:
    with pytest.raises(ConfigError, match="bricks: at least one"):
        parse_cluster_config({"cluster": {"replication": 1}})


def test_cluster_file_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[cluster]\nreplicas = 3\n', "cluster.toml")
    with pytest.raises(ConfigError) as info:
        load_cluster_config(path)
    assert str(info.value) == f"{path}: cluster.replicas: unknown setting (did you mean 'replication'?)"


# -- addresses and describe --------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7401", ("127.0.0.1", 7401)),
    ("brick-1.example.com:80", ("brick-1.example.com", 80)),
    ("[::1]:7401", ("::1", 7401)),
])
def test_parse_address_accepts_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host", ":7401", "host:", "host:0", "host:65536", "::1:7401",
                                  "[::1]7401", "host:12a", "ho st:1"])
def test_parse_address_rejects_bad_text_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"bad address {text!r}")):
        parse_address(text)


def test_describe_lists_every_setting_with_default_and_doc() -> None:
    text = describe(BrickConfig)
    assert "[timeouts]" in text
    assert 'durability = "disk"' in text and "memory|disk|fsync" in text
    assert "id = <required>" in text


@pytest.mark.parametrize("host, port, text", [("127.0.0.1", 7401, "127.0.0.1:7401"),
                                              ("::1", 7401, "[::1]:7401"),
                                              ("db1.example", 80, "db1.example:80")])
def test_an_address_is_formatted_as_parse_address_reads_it(host: str, port: int,
                                                            text: str) -> None:
    from dds.config import format_address
    assert format_address(host, port) == text
    assert parse_address(text) == (host, port)


def _durations(cls: type) -> list[tuple[str, Any]]:
    import attrs as _attrs
    from dds.config import Setting
    out = []
    for section in _attrs.fields(cls):
        sec = section.metadata.get("dds.section")
        if sec is None:
            continue
        for f in _attrs.fields(sec.cls):
            spec: Setting = f.metadata["dds.setting"]
            if f.name.endswith(("_ms", "_hours")):
                out.append((f"{section.name}.{f.name}", spec))
    return out


def test_every_duration_setting_has_an_upper_bound() -> None:
    found = _durations(BrickConfig)
    assert len(found) >= 10
    assert [name for name, spec in found if spec.hi is None] == []


@pytest.mark.parametrize("name", ["timeouts.txn_deadline_ms", "timeouts.lock_wait_ms",
                                  "brick.memory_flush_ms", "brick.quarantine_hours"])
def test_a_duration_above_its_bound_is_refused_naming_the_range(name: str) -> None:
    section, key = name.split(".")
    with pytest.raises(ConfigError, match=rf"{re.escape(name)}: expected .* to "):
        parse_brick_config(brick(**{section: {key: 10**9}}), env=ENV)


def test_a_negative_scrub_rate_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"brick\.scrub_mb_s: expected a number from 0"):
        parse_brick_config(brick(brick={"scrub_mb_s": -1}), env=ENV)
    with pytest.raises(ConfigError, match=r"brick\.scrub_mb_s: expected a number"):
        parse_brick_config(brick(brick={"scrub_mb_s": "fast"}), env=ENV)
    assert parse_brick_config(brick(brick={"scrub_mb_s": 0}), env=ENV).brick.scrub_mb_s == 0.0
    assert parse_brick_config(brick(), env=ENV).brick.scrub_mb_s == 4.0
