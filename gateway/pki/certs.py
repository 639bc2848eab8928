"""The federation's X.509: a CA, the broker's server certificate, client certificates, the CRL.

TLS keys are ECDSA P-256 by default. Ed25519 certificates work between
Mosquitto 2.0.11 and Python's ssl on OpenSSL 3.0 (TLS 1.2 and 1.3, tested:
``tests/test_pki_broker.py``), but many TLS stacks a federation may meet
refuse them: mbedTLS (ESP-IDF's MQTT client), BearSSL, Java before 15,
OpenSSL before 1.1.1. P-256 is accepted by all of them, so it is the
default and Ed25519 is ``--tls-key ed25519``. Signing keys for messages
(COSE) are Ed25519 in any case; they never meet a TLS stack.

Validity: the CRL's next update is the CA's own expiry. OpenSSL refuses
every client once a CRL has expired, so a short-lived CRL that nobody
re-signed would lock the whole federation out; revocation here is by
re-issuing the CRL, which ``tinyfed provision revoke`` does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_KEYS = ("p256", "ed25519")
TlsPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_tls_key(kind: str) -> TlsPrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"TLS key type {kind!r}: expected one of {', '.join(TLS_KEYS)}")


def _digest(key: TlsPrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def private_pem(key: TlsPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, federation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"tinyfed federation {federation}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Authority:
    """The CA's key and certificate: everything it issues goes through here."""

    key: TlsPrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, federation: str, kind: str, now: datetime, days: int) -> Authority:
        key = new_tls_key(kind)
        name = _name(f"tinyfed CA {federation}", federation)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))  # a little slack for clocks behind the hub's
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _digest(key))
        )
        return cls(key, cert)

    @classmethod
    def load(cls, key_pem: bytes, cert_pem_bytes: bytes) -> Authority:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"the CA key is a {type(key).__name__}, not P-256 or Ed25519")
        return cls(key, x509.load_pem_x509_certificate(cert_pem_bytes))

    @property
    def federation(self) -> str:
        values = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(values[0].value).removeprefix("tinyfed federation ") if values else ""

    def issue(
        self, common_name: str, key: TlsPrivateKey, now: datetime, days: int, server_hosts: list[str] | None = None
    ) -> x509.Certificate:
        """A TLS certificate: a client's (its CN is its MQTT username) or, with ``server_hosts``, the broker's."""
        not_after = min(now + timedelta(days=days), self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, self.federation))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server_hosts:
            names: list[x509.GeneralName] = []
            for host in server_hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.key, _digest(self.key))

    def crl(self, revoked: list[tuple[int, datetime]], number: int, now: datetime) -> x509.CertificateRevocationList:
        """The CRL listing ``revoked`` (serial, when); valid until the CA itself expires (see the module doc)."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(self.cert.not_valid_after_utc)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, _digest(self.key))


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)
