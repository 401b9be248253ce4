"""The local CA and the broker's certificate: made once, keys private, renewed when stale."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

from carbonflow.stack.tls import TlsFiles, ensure_tls


def files_in(folder: Path) -> TlsFiles:
    return TlsFiles(
        ca_cert=folder / "mqtt" / "ca.crt",
        ca_key=folder / "mqtt" / "ca.key",
        server_cert=folder / "tls" / "server.crt",
        server_key=folder / "tls" / "server.key",
    )


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_server_certificate_is_issued_by_the_local_ca_for_the_loopback_names(
    tmp_path: Path,
) -> None:
    files = files_in(tmp_path)

    assert ensure_tls(files, ["127.0.0.1", "localhost"], server_owner=None)

    ca, server = load(files.ca_cert), load(files.server_cert)
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (mode(files.ca_key), mode(files.server_key)) == (0o600, 0o600)
    assert mode(files.ca_cert) == 0o644


def test_nothing_is_reissued_while_the_certificate_is_good(tmp_path: Path) -> None:
    files = files_in(tmp_path)
    ensure_tls(files, ["127.0.0.1", "localhost"], server_owner=None)
    before = (files.ca_cert.read_bytes(), files.server_cert.read_bytes())

    assert not ensure_tls(files, ["127.0.0.1", "localhost"], server_owner=None)

    assert (files.ca_cert.read_bytes(), files.server_cert.read_bytes()) == before


def test_a_new_host_name_gets_a_new_certificate_from_the_same_ca(tmp_path: Path) -> None:
    files = files_in(tmp_path)
    ensure_tls(files, ["127.0.0.1"], server_owner=None)
    ca_before = files.ca_cert.read_bytes()

    assert ensure_tls(files, ["127.0.0.1", "broker.local"], server_owner=None)

    assert files.ca_cert.read_bytes() == ca_before
    names = load(files.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["broker.local"]


def test_a_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    files, foreign = files_in(tmp_path / "ours"), files_in(tmp_path / "theirs")
    ensure_tls(files, ["127.0.0.1"], server_owner=None)
    ensure_tls(foreign, ["127.0.0.1"], server_owner=None)
    files.server_cert.write_bytes(foreign.server_cert.read_bytes())

    assert ensure_tls(files, ["127.0.0.1"], server_owner=None)

    load(files.server_cert).verify_directly_issued_by(load(files.ca_cert))
