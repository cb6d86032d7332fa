"""TLS 1.3 contexts and device-key certificates (anysyncfs/net/tls.py), over real TCP on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import functools
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from anysyncfs.core import crypto, ids
from anysyncfs.errors import AuthenticationFailed, DecodeError, IntegrityError, NetworkError, ProtocolError
from anysyncfs.net import tls
from tests.conftest import free_port

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, issue time for certificates built at a fixed moment
DAY = 86_400
HOUR = 3_600

# Test vector (docs/protocol.md 70.1): fixed device seed, ephemeral seed, serial and issue time.
VECTOR_DEVICE_SEED = bytes(range(32))
VECTOR_EPHEMERAL_SEED = bytes(range(32, 64))
VECTOR_SERIAL = 12345
VECTOR_DER = bytes.fromhex(
    "3082018030820132a00302010202023039300506032b65703069312530230603"
    "55040a0c1c616e7973796e636673206465766963652d6b657920636572742076"
    "313140303e06035504030c3764762d616f7171707037747a79696c34686c7133"
    "756d6f6f733661746674366a767271746f737132787935337364676965737667"
    "673461301e170d3235313233313233303030305a170d32363031333130303030"
    "30305a306931253023060355040a0c1c616e7973796e63667320646576696365"
    "2d6b657920636572742076313140303e06035504030c3764762d616f71717070"
    "37747a79696c34686c7133756d6f6f733661746674366a767271746f73713278"
    "7935337364676965737667673461302a300506032b657003210029acbae141bc"
    "caf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7300506032b65"
    "70034100b460426993ae9fd7371361a85aac860a4b384e2c9d8aad9f3db128fe"
    "81fbef7ba436de63e438d450b1483301fc2648eec676e8fa73e847a50f19637a"
    "8566b70f"
)
VECTOR_HASH = bytes.fromhex("79e9c04808dc59b3803ff07eeaf775f363a5862d6a3a101a93afe8734f08b1da")

Handler = Callable[[trio.SocketStream], Awaitable[None]]


# ---------------------------------------------------------------------------------------------------- helpers
@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """Run ``handler`` for every connection to a fresh 127.0.0.1 port; yield the port; stop on exit."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def tls_echo(ident: tls.TlsIdentity) -> Handler:
    async def handler(tcp: trio.SocketStream) -> None:
        stream = tls.server_stream(tcp, ident)
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the dialler rejected us or hung up; both are expected in these tests
        finally:
            await trio.aclose_forcefully(stream)

    return handler


def forge(
    *,
    issuer_key: bytes,
    signer: Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    subject_key: bytes | None = None,
    extensions: Iterable[x509.ExtensionType] = (),
    now: int = T0,
) -> bytes:
    """A certificate that names ``issuer_key`` as issuer but is built and signed however a test wants."""
    ephemeral = Ed25519PrivateKey.generate().public_key()
    builder = (
        x509.CertificateBuilder()
        .issuer_name(tls.device_cert_name(issuer_key))
        .subject_name(tls.device_cert_name(subject_key or issuer_key))
        .public_key(ephemeral)
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - HOUR, tz=dt.timezone.utc))
        .not_valid_after(dt.datetime.fromtimestamp(now + 30 * DAY, tz=dt.timezone.utc))
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    algorithm = None if isinstance(signer, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(private_key=signer, algorithm=algorithm).public_bytes(serialization.Encoding.DER)


def as_signer(device: crypto.SigningKey) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(device.seed)


# ---------------------------------------------------------------------------------------------------- certificates
def test_vector_certificate_is_reproduced_byte_for_byte() -> None:
    device = crypto.SigningKey(VECTOR_DEVICE_SEED)
    ephemeral_public = crypto.SigningKey(VECTOR_EPHEMERAL_SEED).public
    der = tls.issue_tls_cert(device, ephemeral_public, serial=VECTOR_SERIAL, now=T0)
    assert der == VECTOR_DER
    assert tls.cert_hash(der) == VECTOR_HASH == crypto.blake3(der)
    tls.verify_listener_cert(der, device.public, now=T0)
    cert = x509.load_der_x509_certificate(der)
    assert cert.issuer == cert.subject == tls.device_cert_name(device.public)
    assert cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == ids.device_text(device.public)
    assert cert.not_valid_before_utc == dt.datetime(2025, 12, 31, 23, tzinfo=dt.timezone.utc)
    assert cert.not_valid_after_utc == dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc)


def test_identity_certificate_verifies_and_each_identity_is_fresh() -> None:
    device = crypto.SigningKey.generate()
    a, b = tls.make_tls_identity(device), tls.make_tls_identity(device)
    tls.verify_listener_cert(a.cert_der, device.public)
    tls.verify_cert_issuer(b.cert_der, device.public)
    key_a = x509.load_der_x509_certificate(a.cert_der).public_key()
    key_b = x509.load_der_x509_certificate(b.cert_der).public_key()
    assert key_a != key_b  # a new ephemeral key per identity
    assert key_a.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) != device.public


def test_contexts_allow_only_tls13_and_no_session_tickets() -> None:
    ident = tls.make_tls_identity(crypto.SigningKey.generate())
    for ctx in (ident.server_context, ident.client_context):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert ident.server_context.num_tickets == 0


def test_certificate_of_another_device_is_rejected() -> None:
    device, other = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    der = tls.make_tls_identity(other).cert_der
    with pytest.raises(AuthenticationFailed, match=f"listener is not device {ids.device_text(device.public)}"):
        tls.verify_listener_cert(der, device.public)
    with pytest.raises(AuthenticationFailed, match="certificate issuer is not device"):
        tls.verify_cert_issuer(der, device.public)


def test_certificate_naming_the_device_but_signed_by_another_key_is_rejected() -> None:
    device, impostor = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    forged = forge(issuer_key=device.public, signer=as_signer(impostor), now=T0)
    with pytest.raises(AuthenticationFailed, match="listener is not device"):
        tls.verify_listener_cert(forged, device.public, now=T0)
    with pytest.raises(AuthenticationFailed):
        tls.verify_cert_issuer(forged, device.public, now=T0)
    # The same construction signed by the device itself passes, so the signature is what was rejected above.
    tls.verify_listener_cert(forge(issuer_key=device.public, signer=as_signer(device), now=T0), device.public, now=T0)


@pytest.mark.parametrize(
    ("moment", "valid"),
    [
        (T0, True),
        (T0 - 2 * HOUR, True),  # not-before is T0 - 1 h, plus 1 h of clock skew
        (T0 - 2 * HOUR - 1, False),
        (T0 + 30 * DAY + HOUR, True),  # not-after is T0 + 30 days, plus 1 h of clock skew
        (T0 + 30 * DAY + HOUR + 1, False),
        (T0 + 365 * DAY, False),
    ],
)
def test_validity_period_with_one_hour_of_skew(moment: int, valid: bool) -> None:
    device = crypto.SigningKey.generate()
    der = tls.make_tls_identity(device, now=T0).cert_der
    if valid:
        tls.verify_listener_cert(der, device.public, now=moment)
        tls.verify_cert_issuer(der, device.public, now=moment)
    else:
        with pytest.raises(AuthenticationFailed, match="expired|not valid before"):
            tls.verify_listener_cert(der, device.public, now=moment)
        with pytest.raises(AuthenticationFailed, match="expired|not valid before"):
            tls.verify_cert_issuer(der, device.public, now=moment)


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"hello, world", b"\x30\x82\x01\x80" + bytes(100), bytes(4096)])
def test_garbage_der_is_a_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        tls.verify_listener_cert(garbage, crypto.SigningKey.generate().public)


def test_trailing_byte_is_a_decode_error() -> None:
    device = crypto.SigningKey(VECTOR_DEVICE_SEED)
    with pytest.raises(DecodeError):
        tls.verify_listener_cert(VECTOR_DER + b"\x00", device.public, now=T0)


def test_second_encoding_with_signature_padding_bits_is_a_decode_error() -> None:
    # A BIT STRING may claim "1 unused bit"; if the signature's last bit is 0 anyway, cryptography parses the
    # same signature from these different bytes. The canonical-envelope check must refuse the second encoding.
    device = crypto.SigningKey(VECTOR_DEVICE_SEED)
    ephemeral_public = crypto.SigningKey(VECTOR_EPHEMERAL_SEED).public
    der = next(
        d
        for d in (tls.issue_tls_cert(device, ephemeral_public, serial=s, now=T0) for s in range(1, 200))
        if d[-1] & 1 == 0
    )
    tls.verify_listener_cert(der, device.public, now=T0)
    padded = bytearray(der)
    assert padded[-65] == 0  # the "unused bits" byte of the signature BIT STRING
    padded[-65] = 1
    assert x509.load_der_x509_certificate(bytes(padded)).signature == der[-64:]
    with pytest.raises(DecodeError, match="envelope"):
        tls.verify_listener_cert(bytes(padded), device.public, now=T0)


def test_oversize_certificate_is_refused_before_parsing() -> None:
    device = crypto.SigningKey.generate()
    names = [x509.DNSName(f"host{i:04}.example.org") for i in range(300)]
    big = forge(issuer_key=device.public, signer=as_signer(device), extensions=[x509.SubjectAlternativeName(names)])
    assert len(big) > tls.MAX_CERT_LEN
    with pytest.raises(DecodeError, match="over the limit"):
        tls.verify_listener_cert(big, device.public, now=T0)


def test_certificates_outside_the_profile_are_decode_errors() -> None:
    device, other = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    signer = as_signer(device)
    with_extension = forge(
        issuer_key=device.public, signer=signer, extensions=[x509.BasicConstraints(ca=False, path_length=None)]
    )
    other_subject = forge(issuer_key=device.public, signer=signer, subject_key=other.public)
    ecdsa_signed = forge(issuer_key=device.public, signer=ec.generate_private_key(ec.SECP256R1()))
    for der in (with_extension, other_subject, ecdsa_signed):
        with pytest.raises(DecodeError):
            tls.verify_listener_cert(der, device.public, now=T0)


def test_device_key_of_wrong_length_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        tls.verify_cert_issuer(VECTOR_DER, crypto.SigningKey(VECTOR_DEVICE_SEED).public[:31], now=T0)


@given(bit=st.integers(min_value=0, max_value=len(VECTOR_DER) * 8 - 1))
def test_any_flipped_bit_is_rejected(bit: int) -> None:
    flipped = bytearray(VECTOR_DER)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError) as err:
        tls.verify_listener_cert(bytes(flipped), crypto.SigningKey(VECTOR_DEVICE_SEED).public, now=T0)
    assert isinstance(err.value, (DecodeError, AuthenticationFailed))


def test_make_tls_identity_writes_nothing_and_leaks_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    watched = [Path.cwd(), Path(tempfile.gettempdir())]
    before = [sorted(os.listdir(d)) for d in watched]
    fds_before = sorted(os.listdir("/proc/self/fd"))
    ident = tls.make_tls_identity(crypto.SigningKey.generate())
    assert [sorted(os.listdir(d)) for d in watched] == before
    assert sorted(os.listdir("/proc/self/fd")) == fds_before  # the memfd is closed again
    assert ident.cert_der  # (the identity was really made)


# ---------------------------------------------------------------------------------------------------- handshakes
@pytest.mark.trio
async def test_handshake_with_pinned_device_echoes_bytes() -> None:
    listener_device = crypto.SigningKey.generate()
    listener = tls.make_tls_identity(listener_device)
    dialler = tls.make_tls_identity(crypto.SigningKey.generate())
    async with serving(tls_echo(listener)) as port:
        stream, peer_der = await tls.open_tls_stream("127.0.0.1", port, dialler, listener_device.public, timeout=10)
        try:
            assert peer_der == listener.cert_der == tls.peer_cert_der(stream)
            assert stream.version() == "TLSv1.3"
            assert stream.selected_alpn_protocol() == tls.ALPN
            payload = bytes(range(256)) * 64
            await stream.send_all(payload)
            echoed = b""
            while len(echoed) < len(payload):
                echoed += await stream.receive_some()
            assert echoed == payload
        finally:
            await stream.aclose()


@pytest.mark.trio
async def test_listener_sees_no_tls_certificate_from_the_dialler() -> None:
    listener_device = crypto.SigningKey.generate()
    listener = tls.make_tls_identity(listener_device)
    dialler = tls.make_tls_identity(crypto.SigningKey.generate())
    seen: list[BaseException] = []
    looked = trio.Event()

    async def handler(tcp: trio.SocketStream) -> None:
        stream = tls.server_stream(tcp, listener)
        try:
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == tls.ALPN
            tls.peer_cert_der(stream)
        except DecodeError as exc:
            seen.append(exc)
        finally:
            looked.set()
            await trio.aclose_forcefully(stream)

    async with serving(handler) as port:
        stream, _ = await tls.open_tls_stream("127.0.0.1", port, dialler, listener_device.public, timeout=10)
        await looked.wait()
        await trio.aclose_forcefully(stream)
    assert len(seen) == 1  # the dialler's certificate must travel in-band (session Hello)


@pytest.mark.trio
async def test_wrong_pinned_device_is_rejected_after_handshake() -> None:
    listener = tls.make_tls_identity(crypto.SigningKey.generate())
    dialler = tls.make_tls_identity(crypto.SigningKey.generate())
    expected = crypto.SigningKey.generate().public
    async with serving(tls_echo(listener)) as port:
        with pytest.raises(AuthenticationFailed, match=f"listener is not device {ids.device_text(expected)}"):
            await tls.open_tls_stream("127.0.0.1", port, dialler, expected, timeout=10)


@pytest.mark.trio
async def test_silent_listener_times_out_as_network_error() -> None:
    async def never_answers(tcp: trio.SocketStream) -> None:
        await trio.sleep_forever()

    dialler = tls.make_tls_identity(crypto.SigningKey.generate())
    async with serving(never_answers) as port:
        with pytest.raises(NetworkError, match="timed out"):
            await tls.open_tls_stream("127.0.0.1", port, dialler, crypto.SigningKey.generate().public, timeout=0.5)


@pytest.mark.trio
async def test_non_tls_listener_is_a_network_error() -> None:
    async def speaks_http(tcp: trio.SocketStream) -> None:
        await tcp.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await tcp.aclose()

    dialler = tls.make_tls_identity(crypto.SigningKey.generate())
    async with serving(speaks_http) as port:
        with pytest.raises(NetworkError, match="cannot connect"):
            await tls.open_tls_stream("127.0.0.1", port, dialler, crypto.SigningKey.generate().public, timeout=10)


@pytest.mark.trio
async def test_connection_refused_is_a_network_error() -> None:
    dialler = tls.make_tls_identity(crypto.SigningKey.generate())
    with pytest.raises(NetworkError, match="cannot connect"):
        await tls.open_tls_stream("127.0.0.1", free_port(), dialler, crypto.SigningKey.generate().public, timeout=10)


@pytest.mark.trio
async def test_listener_without_our_alpn_is_a_protocol_error(tmp_path: Path) -> None:
    # A TLS 1.3 server holding a valid device-key certificate but offering no ALPN. (Only this test writes a
    # key to disk, into its own tmp dir; the production path never does.)
    device = crypto.SigningKey.generate()
    ephemeral = Ed25519PrivateKey.generate()
    raw = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    der = tls.issue_tls_cert(device, raw, serial=1, now=int(time.time()))
    chain = tmp_path / "chain.pem"
    key_pem = ephemeral.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain.write_bytes(ssl.DER_cert_to_PEM_cert(der).encode() + key_pem)
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.load_cert_chain(chain)

    async def handler(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, plain, server_side=True)
        try:
            await stream.do_handshake()
            await stream.receive_some()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    dialler = tls.make_tls_identity(crypto.SigningKey.generate())
    async with serving(handler) as port:
        with pytest.raises(ProtocolError, match="anysync/1"):
            await tls.open_tls_stream("127.0.0.1", port, dialler, device.public, timeout=10)


@pytest.mark.trio
async def test_tls12_client_cannot_connect() -> None:
    listener = tls.make_tls_identity(crypto.SigningKey.generate())
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serving(tls_echo(listener)) as port:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, old, server_hostname=tls.SNI_NAME)
        with pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()
        await trio.aclose_forcefully(stream)
