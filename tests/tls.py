"""
Throwaway certificates for the TLS tests (no tests here).

L{makePKI} creates, with the C{cryptography} package, a root CA, optionally an
intermediate CA, and a server certificate for C{localhost} and C{127.0.0.1}
(both in the subjectAltName), written as PEM files into a directory.
L{serverDescription} turns them into the C{ssl:} endpoint string chatd's
listeners take, and L{clientOptions} builds client TLS options that trust the
root alone and check the server's chain and host name: nothing in these tests
turns certificate verification off.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.internet.endpoints import quoteStringArgument

#: The name the server certificate is for, and the one clients check.
HOSTNAME = "localhost"
LOOPBACK = "127.0.0.1"


@dataclass
class PKI:
    """The PEM files of one throwaway PKI, by absolute path."""

    #: The root CA certificate: what clients trust.
    root: str
    #: The server's private key (unencrypted PKCS#8 PEM).
    key: str
    #: The server's certificate (the leaf alone); None to serve the
    #: certificate from C{key}'s file (see C{combined}).
    cert: str | None
    #: The intermediate CA certificate, when the leaf is signed by one.
    chain: str | None
    #: The leaf followed by the intermediate, as some CAs hand them out.
    fullchain: str | None
    #: The key followed by the leaf, in one file.
    combined: str

    def rootCertificate(self) -> ssl.Certificate:
        with open(self.root, "rb") as f:
            return ssl.Certificate.loadPEM(f.read())


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "chatd tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _newKey() -> ec.EllipticCurvePrivateKey:
    # P-256: generated in microseconds, accepted by every TLS stack.
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject, issuer, publicKey, issuerKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuerKey.public_key()),
            False,
        )
    )


def _caUsage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _serverUsage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _makeCA(common: str, issuer=None, issuerKey=None, pathLength=None):
    """A CA key and certificate; self-signed unless C{issuer} is given."""
    key = _newKey()
    subject = _name(common)
    if issuer is None:
        issuer, issuerKey = subject, key
    else:
        issuer = issuer.subject
    cert = (
        _builder(subject, issuer, key.public_key(), issuerKey)
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathLength), True)
        .add_extension(_caUsage(), True)
        .sign(issuerKey, hashes.SHA256())
    )
    return key, cert


def _makeServer(issuer: x509.Certificate, issuerKey):
    key = _newKey()
    cert = (
        _builder(_name(HOSTNAME), issuer.subject, key.public_key(), issuerKey)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_serverUsage(), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(HOSTNAME),
                    x509.IPAddress(ipaddress.IPv4Address(LOOPBACK)),
                ]
            ),
            False,
        )
        .sign(issuerKey, hashes.SHA256())
    )
    return key, cert


def _certPEM(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _keyPEM(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(directory: str, name: str, data: bytes, mode: int = 0o644) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def makePKI(directory: str, intermediate: bool = False, rootName: str = "chatd test root") -> PKI:
    """
    Create C{directory} and write into it C{root.pem}, C{key.pem} (mode 0600),
    C{cert.pem}, C{combined.pem} (key and certificate, mode 0600) and, when
    C{intermediate} is true, C{chain.pem} and C{fullchain.pem}: the server
    certificate is then signed by an intermediate CA that the root signed,
    and a client that trusts the root alone needs the server to send the
    intermediate as well.
    """
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    rootKey, rootCert = _makeCA(rootName)
    chain = fullchain = None
    if intermediate:
        signerKey, signerCert = _makeCA(
            "chatd test intermediate", rootCert, rootKey, pathLength=0
        )
        chain = _write(directory, "chain.pem", _certPEM(signerCert))
    else:
        signerKey, signerCert = rootKey, rootCert
    serverKey, serverCert = _makeServer(signerCert, signerKey)
    if intermediate:
        fullchain = _write(
            directory, "fullchain.pem", _certPEM(serverCert) + _certPEM(signerCert)
        )
    return PKI(
        root=_write(directory, "root.pem", _certPEM(rootCert)),
        key=_write(directory, "key.pem", _keyPEM(serverKey), 0o600),
        cert=_write(directory, "cert.pem", _certPEM(serverCert)),
        chain=chain,
        fullchain=fullchain,
        combined=_write(
            directory, "combined.pem", _keyPEM(serverKey) + _certPEM(serverCert), 0o600
        ),
    )


def serverDescription(pki: PKI, port: int = 0, chain: bool = True) -> str:
    """
    The C{ssl:} endpoint string serving C{pki} on C{127.0.0.1}, as an operator
    would pass it to C{--protobuf}, C{--msrp}, C{--http} or C{--msgr}
    (docs/tls.md). The intermediate, if any, is sent unless C{chain} is false.
    """
    parts = [
        f"ssl:{port}",
        f"interface={quoteStringArgument(LOOPBACK)}",
        f"privateKey={quoteStringArgument(pki.key)}",
    ]
    if pki.cert is not None:
        # Without certKey, Twisted reads the certificate from privateKey's file.
        parts.append(f"certKey={quoteStringArgument(pki.cert)}")
    if chain and pki.chain is not None:
        parts.append(f"extraCertChain={quoteStringArgument(pki.chain)}")
    return ":".join(parts)


def clientOptions(pki: PKI, hostname: str = HOSTNAME):
    """
    Client TLS options (an L{IOpenSSLClientConnectionCreator}) that trust
    C{pki}'s root alone and verify the server's chain and C{hostname}.
    """
    return ssl.optionsForClientTLS(hostname, trustRoot=pki.rootCertificate())


__all__ = ["HOSTNAME", "LOOPBACK", "PKI", "makePKI", "serverDescription", "clientOptions"]
