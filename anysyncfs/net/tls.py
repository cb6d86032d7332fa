"""TLS 1.3 transport contexts and device-key certificates (docs/protocol.md, section 70.1).

Each process makes an **ephemeral** Ed25519 TLS key at start and a short-lived X.509 v3 certificate for it,
issued and signed by the **device key**. The device secret is therefore never handed to OpenSSL and never
written to disk; the ephemeral key reaches OpenSSL through an anonymous in-memory file (``memfd``), never through
a path on a file system.

Python's ``ssl`` cannot accept a certificate that does not chain to a CA it knows, so both sides run with
``CERT_NONE`` and verify by hand:

* the dialler checks the listener's certificate against the device key it pinned (from a ticket or config):
  TLS proves the listener holds the ephemeral key of that certificate, and the issuer signature proves the
  device key vouched for that ephemeral key;
* the listener never sees a TLS client certificate; the dialler's certificate travels in-band in the session
  Hello and is bound by the signed transcript (the session layer's job; :func:`verify_cert_issuer` is its check).

This module, like ``core/crypto.py``, imports ``cryptography``; it is the one other place allowed to, because it
builds and parses X.509. Ed25519 verification itself still goes through the crypto facade.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import ssl
import time
import warnings
from dataclasses import dataclass

import trio
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from ..core import crypto, ids
from ..core.crypto import SigningKey
from ..errors import AuthenticationFailed, BadSignature, DecodeError, NetworkError, ProtocolError

ALPN = "anysync/1"  # the only application protocol either side offers or accepts
MAX_CERT_LEN = 4096  # bound on a certificate's DER before it is parsed (ours are about 300 bytes)

# The certificate profile. Issuer and subject are the same name, one RDN each:
#   O  = CERT_PROFILE  (names the profile and its version; a new profile changes this string)
#   CN = "dv-<base32 of the device public key>"  (55 characters; X.509 caps a CN at 64)
CERT_PROFILE = "anysyncfs device-key cert v1"
CERT_BACKDATE_S = 3600  # not-before = issue time - 1 h, so a peer whose clock is a little behind accepts it
CERT_LIFETIME_S = 30 * 86400  # not-after = issue time + 30 days; a process re-issues before that
CLOCK_SKEW_S = 3600  # verifiers accept a certificate up to 1 h outside its validity period
SNI_NAME = "anysync"  # sent as server_hostname; never checked (we pin the device key instead)

# DER of the AlgorithmIdentifier for Ed25519 (RFC 8410): SEQUENCE (30, len 5) { OID (06, len 3) 1.3.101.112
# (2B 65 70) }, parameters absent.
_ED25519_ALGORITHM_DER = bytes.fromhex("300506032b6570")
# DER header of the signature BIT STRING: tag 03, length 65 (0x41), 0 unused bits; then the 64-byte signature.
_SIGNATURE_BITSTRING_HEADER = bytes.fromhex("034100")


@dataclass(frozen=True)
class TlsIdentity:
    """This process's TLS certificate (DER) and the two contexts that present it with its ephemeral key."""

    cert_der: bytes
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext


# ---------------------------------------------------------------------------------------------------- issuing
def device_cert_name(device_key: bytes) -> x509.Name:
    """The issuer (and subject) name of every TLS certificate issued by ``device_key``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CERT_PROFILE),
            x509.NameAttribute(NameOID.COMMON_NAME, ids.device_text(device_key)),
        ]
    )


def _utc(seconds: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)


def issue_tls_cert(device: SigningKey, ephemeral_public: bytes, *, serial: int, now: int) -> bytes:
    """DER of the certificate for ``ephemeral_public`` signed by ``device``. Deterministic for fixed inputs
    (Ed25519 signatures are), which is what the test vector relies on; :func:`make_tls_identity` draws the
    ephemeral key and the serial at random."""
    if len(ephemeral_public) != crypto.PUBLIC_KEY_LEN:
        raise ValueError("an Ed25519 public key is 32 bytes")
    name = device_cert_name(device.public)
    builder = (
        x509.CertificateBuilder()
        .issuer_name(name)
        .subject_name(name)
        .public_key(Ed25519PublicKey.from_public_bytes(ephemeral_public))
        .serial_number(serial)
        .not_valid_before(_utc(now - CERT_BACKDATE_S))
        .not_valid_after(_utc(now + CERT_LIFETIME_S))
    )
    # The device seed is turned into a cryptography key only for this one signature.
    signer = Ed25519PrivateKey.from_private_bytes(device.seed)
    return builder.sign(private_key=signer, algorithm=None).public_bytes(serialization.Encoding.DER)


def _load_chain(context: ssl.SSLContext, chain_pem: bytes) -> None:
    """Hand certificate + private key (PEM) to OpenSSL through an anonymous memory file: ``load_cert_chain``
    only takes paths, and the key must never land on a real file system."""
    fd = os.memfd_create("anysyncfs-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(chain_pem)
        while view:
            view = view[os.write(fd, view) :]
        # Opening /proc/self/fd/N gives OpenSSL its own file description, reading from offset 0.
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _new_context(protocol: ssl._SSLMethod, chain_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # must be cleared before verify_mode can drop to CERT_NONE
    context.verify_mode = ssl.CERT_NONE  # we verify the device-key signature ourselves (module docstring)
    context.set_alpn_protocols([ALPN])
    _load_chain(context, chain_pem)
    return context


def make_tls_identity(device: SigningKey, *, now: float | None = None) -> TlsIdentity:
    """A fresh ephemeral TLS key, its certificate signed by ``device``, and server/client contexts using it.

    Nothing is written to disk. ``now`` (Unix seconds) fixes the issue time, for tests.
    """
    issued = int(time.time() if now is None else now)
    ephemeral = Ed25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    cert_der = issue_tls_cert(device, ephemeral_public, serial=x509.random_serial_number(), now=issued)
    chain_pem = ssl.DER_cert_to_PEM_cert(cert_der).encode("ascii") + ephemeral.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server_context = _new_context(ssl.PROTOCOL_TLS_SERVER, chain_pem)
    # No session tickets: a resumed session would skip the certificate, and every dial must show it.
    server_context.num_tickets = 0
    client_context = _new_context(ssl.PROTOCOL_TLS_CLIENT, chain_pem)
    return TlsIdentity(cert_der=cert_der, server_context=server_context, client_context=client_context)


# ---------------------------------------------------------------------------------------------------- verifying
@dataclass(frozen=True)
class _ParsedCert:
    tbs: bytes
    signature: bytes
    issuer: x509.Name
    subject: x509.Name
    not_before: _dt.datetime
    not_after: _dt.datetime


def _der_header(tag: int, length: int) -> bytes:
    """DER tag and definite length (short form below 128, else the minimal long form)."""
    if length < 0x80:
        return bytes([tag, length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(body)]) + body


def _parse(der: bytes) -> _ParsedCert:
    """Strict parse into the fields we check; every malformation is a :class:`DecodeError`."""
    if len(der) > MAX_CERT_LEN:
        raise DecodeError(f"certificate is {len(der)} bytes, over the limit of {MAX_CERT_LEN}")
    try:
        # cryptography only warns about some RFC 5280 violations (a serial that is not positive); make them
        # errors. (catch_warnings swaps a process-wide filter list: parse on the trio thread, not in workers.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
        version = cert.version
        outer_algorithm = cert.signature_algorithm_oid
        tbs, signature = cert.tbs_certificate_bytes, cert.signature
        extension_count = len(cert.extensions)
        public_key = cert.public_key()
        parsed = _ParsedCert(
            tbs=tbs,
            signature=signature,
            issuer=cert.issuer,
            subject=cert.subject,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
    except (ValueError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
            UnsupportedAlgorithm, CryptographyDeprecationWarning) as exc:
        # (DuplicateExtension and UnsupportedGeneralNameType come from reading the extensions and are no
        # ValueError: uncaught, a peer's certificate would crash whoever accepted or dialled it.)
        raise DecodeError(f"certificate is not valid DER X.509: {' '.join(str(exc).split())}") from None
    if version is not x509.Version.v3 or outer_algorithm != SignatureAlgorithmOID.ED25519:
        raise DecodeError("certificate is not an X.509 v3 certificate signed with Ed25519")
    # The signed part is checked by the signature; this pins the unsigned envelope byte for byte (no padding
    # bits in the signature, no second encoding of one certificate, nothing trailing).
    envelope = tbs + _ED25519_ALGORITHM_DER + _SIGNATURE_BITSTRING_HEADER + signature
    if len(signature) != crypto.SIGNATURE_LEN or der != _der_header(0x30, len(envelope)) + envelope:
        raise DecodeError("certificate envelope is not the canonical Ed25519 layout")
    if not isinstance(public_key, Ed25519PublicKey) or extension_count != 0:
        raise DecodeError(f"certificate does not follow the profile {CERT_PROFILE!r}")
    return parsed


def _verify(der: bytes, device_key: bytes, now: float | None, who: str) -> None:
    if len(device_key) != crypto.PUBLIC_KEY_LEN:
        raise DecodeError("a device key is 32 bytes")
    cert = _parse(der)
    device = ids.device_text(device_key)
    if cert.subject != cert.issuer:
        raise DecodeError(f"certificate does not follow the profile {CERT_PROFILE!r}")
    if cert.issuer != device_cert_name(device_key):
        raise AuthenticationFailed(f"{who} is not device {device}")
    try:
        crypto.verify(device_key, cert.tbs, cert.signature)
    except BadSignature:
        raise AuthenticationFailed(f"{who} is not device {device}") from None
    moment = _utc(int(time.time() if now is None else now))
    skew = _dt.timedelta(seconds=CLOCK_SKEW_S)
    if moment < cert.not_before - skew:
        raise AuthenticationFailed(f"certificate of {device} is not valid before {cert.not_before:%Y-%m-%dT%H:%M:%SZ}")
    if moment > cert.not_after + skew:
        raise AuthenticationFailed(f"certificate of {device} expired at {cert.not_after:%Y-%m-%dT%H:%M:%SZ}")


def verify_listener_cert(der: bytes, device_key: bytes, *, now: float | None = None) -> None:
    """Check the certificate a listener showed in the TLS handshake against the pinned ``device_key``.

    :class:`DecodeError` if it is malformed or over :data:`MAX_CERT_LEN`; :class:`AuthenticationFailed` if the
    device key did not issue it or it is outside its validity period (± :data:`CLOCK_SKEW_S`).
    """
    _verify(der, device_key, now, "listener")


def verify_cert_issuer(der: bytes, device_key: bytes, *, now: float | None = None) -> None:
    """The same checks as :func:`verify_listener_cert`, for a dialler's in-band certificate and the device key
    it claims."""
    _verify(der, device_key, now, "certificate issuer")


def cert_hash(der: bytes) -> bytes:
    """BLAKE3-256 of the certificate's DER (what the session transcript binds)."""
    return crypto.blake3(der)


# ---------------------------------------------------------------------------------------------------- streams
def peer_cert_der(stream: trio.SSLStream[trio.SocketStream]) -> bytes:
    """The DER certificate the peer showed in the handshake (a dialler always sees the listener's)."""
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise DecodeError("peer showed no TLS certificate")
    return bytes(der)


def server_stream(tcp: trio.SocketStream, ident: TlsIdentity) -> trio.SSLStream[trio.SocketStream]:
    """Wrap an accepted connection; the handshake runs on first use (or an explicit ``do_handshake``)."""
    watch_liveness(tcp)
    return trio.SSLStream(tcp, ident.server_context, server_side=True)


LIVENESS_S = 20  # a peer that acknowledges nothing for this long (a cut link, a vanished device) is a dead path


def watch_liveness(tcp: trio.SocketStream) -> None:
    """Let the kernel end a connection whose peer vanished — sent data unacknowledged for ``LIVENESS_S``, or an
    idle connection whose keepalive probes go unanswered for about as long — so nobody waits on a dead path
    until a request times out; the peer is then dialled again. Best effort: options a platform lacks are skipped."""
    sock = tcp.socket
    for level, name, value in ((socket.SOL_SOCKET, "SO_KEEPALIVE", 1), (socket.IPPROTO_TCP, "TCP_KEEPIDLE", 10),
                               (socket.IPPROTO_TCP, "TCP_KEEPINTVL", 5), (socket.IPPROTO_TCP, "TCP_KEEPCNT", 2),
                               (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", LIVENESS_S * 1000)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except OSError:
                pass


def _reason(exc: BaseException) -> str:
    """A one-line description of a transport failure (trio wraps ssl errors, so look at the cause too)."""
    text = str(exc) or str(exc.__cause__ or "") or type(exc).__name__
    return " ".join(text.split())


async def open_tls_stream(
    host: str, port: int, ident: TlsIdentity, device_key: bytes, *, timeout: float
) -> tuple[trio.SSLStream[trio.SocketStream], bytes]:
    """Dial ``host:port``, run the TLS 1.3 handshake and check the listener is device ``device_key``.

    ``timeout`` bounds connecting and the handshake together. Returns the stream and the listener's DER
    certificate. :class:`NetworkError` if the peer cannot be reached, times out or breaks the handshake;
    :class:`ProtocolError` if it does not speak :data:`ALPN`; the errors of :func:`verify_listener_cert` if it is
    not the pinned device. On any failure the connection is closed.
    """
    where = f"{host}:{port}"
    tcp: trio.SocketStream | None = None
    stream: trio.SSLStream[trio.SocketStream] | None = None
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
            watch_liveness(tcp)
            stream = trio.SSLStream(tcp, ident.client_context, server_side=False, server_hostname=SNI_NAME)
            await stream.do_handshake()
        if stream.selected_alpn_protocol() != ALPN:
            raise ProtocolError(f"peer at {where} does not speak {ALPN}")
        der = peer_cert_der(stream)
        verify_listener_cert(der, device_key)
        return stream, der
    except BaseException as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        elif tcp is not None:
            await trio.aclose_forcefully(tcp)
        if isinstance(exc, trio.TooSlowError):
            raise NetworkError(f"connecting to {where} timed out after {timeout:g} s") from None
        if isinstance(exc, (OSError, trio.BrokenResourceError)):
            raise NetworkError(f"cannot connect to {where}: {_reason(exc)}") from None
        raise
