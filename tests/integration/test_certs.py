"""``dds-admin certs`` run as a process, as an operator would: the files it writes, their
modes, what ``show`` says and the exit statuses."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dds import tls

from tests.harness.admin import run_admin

UTC = datetime.timezone.utc


def certs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_admin([sys.executable, "-m", "dds.tools.admin", "certs", *map(str, args)],
                     dict(os.environ), timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's stderr, checked to be a single ``error:`` line."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pki" / "ca"
    result = certs("init", d, "--cluster", "prod")
    assert result.returncode == 0, result.stderr
    return d


def test_init_writes_a_private_ca_key_and_a_ca_certificate_in_a_private_directory(
        ca_dir: Path) -> None:
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "ca.key") == 0o600
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert cert.subject == x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "DDS cluster CA prod"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "prod")])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(cert)                  # self-signed
    key, _ = tls.load_ca(ca_dir / "ca.key", ca_dir / "ca.crt")    # and they belong together
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_a_second_init_without_force_is_refused_and_changes_nothing(ca_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    result = certs("init", ca_dir, "--cluster", "prod")
    assert result.returncode == 1
    assert "ca.key already exists" in one_error_line(result)
    assert "--force" in result.stderr
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before


def test_init_with_force_replaces_the_ca(ca_dir: Path) -> None:
    before = (ca_dir / "ca.crt").read_bytes()
    result = certs("init", ca_dir, "--cluster", "prod", "--force")
    assert result.returncode == 0, result.stderr
    assert (ca_dir / "ca.crt").read_bytes() != before
    assert mode(ca_dir / "ca.key") == 0o600


def test_issue_writes_a_key_and_a_certificate_the_ca_signed_for_its_cluster(
        ca_dir: Path) -> None:
    result = certs("issue", "--role", "brick", "b0", "--ca-dir", ca_dir)
    assert result.returncode == 0, result.stderr
    assert mode(ca_dir / "b0.key") == 0o600
    files = tls.load_tls_files(ca_dir / "ca.crt", ca_dir / "b0.crt", ca_dir / "b0.key",
                               cluster="prod", role="brick")
    assert (files.identity.role, files.identity.id) == ("brick", "b0")
    days = (files.identity.not_after - datetime.datetime.now(UTC)).days
    assert 824 <= days <= 825


def test_issue_with_out_writes_into_a_new_private_directory(ca_dir: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "hosts" / "app1"
    result = certs("issue", "--role", "client", "app1", "--ca-dir", ca_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert mode(out) == 0o700 and mode(out / "app1.key") == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["app1.crt", "app1.key"]
    assert not (ca_dir / "app1.crt").exists()


def test_issue_of_an_unknown_role_is_a_usage_error_listing_the_roles(ca_dir: Path) -> None:
    result = certs("issue", "--role", "root", "x", "--ca-dir", ca_dir)
    assert result.returncode == 2
    assert all(role in result.stderr for role in ("'brick'", "'admin'", "'client'"))
    assert "Traceback" not in result.stderr


def test_issue_refuses_a_name_that_cannot_be_a_file_name_and_an_id(ca_dir: Path) -> None:
    result = certs("issue", "--role", "admin", "../evil", "--ca-dir", ca_dir)
    assert result.returncode == 2
    assert "[A-Za-z0-9_-]{1,64}" in result.stderr
    assert sorted(p.name for p in ca_dir.parent.iterdir()) == ["ca"]


def test_issue_refuses_to_replace_a_certificate_without_force(ca_dir: Path) -> None:
    assert certs("issue", "--role", "brick", "b0", "--ca-dir", ca_dir).returncode == 0
    before = (ca_dir / "b0.crt").read_bytes()
    result = certs("issue", "--role", "brick", "b0", "--ca-dir", ca_dir)
    assert result.returncode == 1
    assert "b0.key already exists" in one_error_line(result)
    assert (ca_dir / "b0.crt").read_bytes() == before


def test_issue_refuses_a_ca_key_readable_by_others(ca_dir: Path) -> None:
    (ca_dir / "ca.key").chmod(0o644)
    result = certs("issue", "--role", "brick", "b0", "--ca-dir", ca_dir)
    assert result.returncode == 1
    assert "ca.key" in one_error_line(result) and "chmod 600" in result.stderr
    assert not (ca_dir / "b0.crt").exists()


def test_show_prints_what_a_certificate_names_and_exits_0(ca_dir: Path) -> None:
    certs("issue", "--role", "admin", "ops", "--ca-dir", ca_dir)
    result = certs("show", ca_dir / "ops.crt")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:]
                  if not line.lstrip().startswith(("not ", "days ")))
    assert (fields["cluster"], fields["role"], fields["id"]) == ("prod", "admin", "ops")
    assert fields["issuer"] == "O=prod,CN=DDS cluster CA prod"
    assert fields["status"] == "valid"
    assert "days left   825" in result.stdout or "days left   824" in result.stdout


def test_show_warns_of_a_certificate_with_fewer_than_30_days_left(ca_dir: Path) -> None:
    certs("issue", "--role", "client", "app", "--ca-dir", ca_dir, "--days", "10")
    text = certs("show", ca_dir / "app.crt")
    as_json = certs("show", ca_dir / "app.crt", "--json")
    assert text.returncode == as_json.returncode == 0
    assert "warning: expires in 10 days" in text.stdout
    report = json.loads(as_json.stdout)
    assert report["expires_soon"] is True and report["expired"] is False
    assert (report["cluster"], report["role"], report["id"]) == ("prod", "client", "app")


def test_show_says_expired_and_exits_1_for_an_expired_certificate(ca_dir: Path) -> None:
    ca_key, ca_cert = tls.load_ca(ca_dir / "ca.key", ca_dir / "ca.crt")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, "old"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "brick"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "prod")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(9)
            .not_valid_before(datetime.datetime(2021, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime.datetime(2022, 6, 30, 8, 0, tzinfo=UTC))
            .sign(ca_key, hashes.SHA256()))
    tls.write_cert(ca_dir / "old.crt", cert, False)
    text = certs("show", ca_dir / "old.crt")
    as_json = certs("show", ca_dir / "old.crt", "--json")
    assert text.returncode == as_json.returncode == 1
    assert "EXPIRED on 2022-06-30 08:00 UTC" in text.stdout
    report = json.loads(as_json.stdout)
    assert report["expired"] is True and report["expires_soon"] is False


def test_show_exits_2_naming_a_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    path = tmp_path / "thing.pem"
    path.write_text("not a certificate\n")
    result = certs("show", path)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{path}: not a PEM certificate" in one_error_line(result)


def test_show_of_a_key_file_says_it_holds_a_private_key(ca_dir: Path) -> None:
    result = certs("show", ca_dir / "ca.key")
    assert result.returncode == 2 and result.stdout == ""
    assert "ca.key: not a PEM certificate (it holds a private key)" in one_error_line(result)
