"""A local certificate authority and the broker's server certificate, made with cryptography.

The CA is created once per state dir and kept; clients trust its certificate
(``<state_dir>/mqtt/ca.crt``). The server certificate names the loopback addresses the
broker listens on and is issued again when it is missing, names other hosts, was not issued
by this CA, or expires within ``RENEW_BEFORE``. Private keys are written 0600.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from carbonflow.errors import StackError
from carbonflow.files import write_private

logger = logging.getLogger(__name__)

CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=825)
RENEW_BEFORE = timedelta(days=30)
# Certificates are valid from a little before now, against small clock differences.
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StackError(f"cannot read the local CA in {files.ca_cert.parent}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StackError(f"{files.ca_key} is not the EC key the stack creates")
    return cert, key


def _create_ca(
    files: TlsFiles, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CarbonFlow local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, "CarbonFlow local CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(files.ca_key, _key_pem(key))
    write_private(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    logger.info("created a local certificate authority: %s", files.ca_cert)
    return cert, key


def _server_cert_ok(
    files: TlsFiles, ca_cert: x509.Certificate, hosts: Sequence[str], now: datetime
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        if not files.server_key.exists():
            return False
        cert.verify_directly_issued_by(ca_cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (FileNotFoundError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now and set(names) >= set(_san(hosts))


def ensure_tls(files: TlsFiles, hosts: Sequence[str], server_owner: tuple[int, int] | None) -> bool:
    """Create what is missing or stale; True when a new server certificate was written.

    ``server_owner`` (uid, gid) owns the server key, so a broker running as its own
    account can read it.
    """
    now = datetime.now(UTC)
    loaded = _load_ca(files)
    ca_cert, ca_key = loaded if loaded is not None else _create_ca(files, now)
    if _server_cert_ok(files, ca_cert, hosts, now):
        return False
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(files.server_key, _key_pem(key), owner=server_owner)
    write_private(
        files.server_cert,
        cert.public_bytes(serialization.Encoding.PEM),
        mode=0o644,
        owner=server_owner,
    )
    logger.info("issued the broker's TLS certificate for %s", ", ".join(hosts))
    return True
