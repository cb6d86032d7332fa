"""LAN discovery with mDNS / DNS-SD (``zeroconf``): members of a space on the same network find each other's
listeners without a provider (issue 13, docs/protocol.md 70.14).

A device announces one ``_anysync._tcp`` service per space it serves. The instance and host names are random
per process, and the TXT record holds only ``v=1`` and ``s=`` — the device key sealed (AES-256-GCM) under a key
derived from the space's current epoch key and the current 10-minute window. A stranger sees a random name, an
address and a port; a member opens ``s`` with its own epoch key (the tag is the recognition) and dials the device
it names at the announced address, pinning that key: a spoofed announcement can only point at a listener that
fails authentication. Announcements are sealed again when the window moves; windows next to the current one are
accepted too (clocks differ).

Each announcement also carries ``a=``: the same device key sealed under a key derived with HKDF-SHA256 from the
*account* seed and the window (docs/protocol.md 70.15). A device being restored from the recovery phrase holds no
space key yet, only the account seed: this is how it recognises the devices of its own account on the LAN
(:func:`find_account_devices`) and asks them for the account's vault. A stranger sees a fresh random value every
window and every announcement.
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable

import trio

from ..core import crypto
from ..core.address import PeerAddress
from ..errors import AuthenticationFailed, PermissionDenied
from ..replica import Replica
from .sync import SpaceSync

log = logging.getLogger(__name__)

SERVICE_TYPE = "_anysync._tcp.local."
WINDOW_S = 600
KEY_CONTEXT = "anysyncfs mdns announcement v1"
AAD_CONTEXT = b"anysyncfs mdns announcement v1\x00"
ACCOUNT_INFO = b"anysyncfs mdns account v1\x00"  # HKDF info prefix (then the window) and AAD prefix of ``a``
NONCE_LEN = 12
SEALED_LEN = NONCE_LEN + 32 + 16
MAX_TXT_VALUE = 128  # longer values are not ours: ignored before decoding
RESOLVE_MS = 1500
RECHECK_S = 5.0  # how often the window and our own addresses are looked at
DEFAULT_LAN_WAIT_S = 3.0  # how long ``init --restore --lan`` listens for announcements


def window_of(now: float) -> int:
    return int(now // WINDOW_S)


def _key(epoch_key: bytes, space_id: bytes, window: int) -> bytes:
    return crypto.derive_key(KEY_CONTEXT, epoch_key + space_id + struct.pack(">Q", window))


def _aad(window: int, port: int) -> bytes:
    return AAD_CONTEXT + struct.pack(">QH", window, port)


def account_key(account_seed: bytes, window: int) -> bytes:
    """The key of an ``a`` value: HKDF-SHA256 of the account seed, bound to the window (a new key every window,
    so values of two windows cannot be linked even by someone who learns one window's key)."""
    return crypto.hkdf_sha256(account_seed, ACCOUNT_INFO + struct.pack(">Q", window))


def _account_aad(window: int, port: int) -> bytes:
    return ACCOUNT_INFO + struct.pack(">QH", window, port)


def _seal(key: bytes, aad: bytes, device: bytes, nonce: bytes | None) -> str:
    nonce = nonce if nonce is not None else crypto.random_bytes(NONCE_LEN)
    sealed = nonce + crypto.Aead(key).encrypt(nonce, device, aad)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def _open(value: bytes, now: float, key_and_aad: Callable[[int], tuple[bytes, bytes]]) -> bytes | None:
    """The device key sealed in ``value`` for a window next to ``now`` (clocks differ), else None."""
    if len(value) > MAX_TXT_VALUE:
        return None
    try:
        sealed = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return None
    if len(sealed) != SEALED_LEN:
        return None
    here = window_of(now)
    for window in (here, here - 1, here + 1):
        key, aad = key_and_aad(window)
        try:
            return crypto.Aead(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
        except AuthenticationFailed:
            continue
    return None


def seal_device(epoch_key: bytes, space_id: bytes, window: int, port: int, device: bytes,
                nonce: bytes | None = None) -> str:
    """The ``s`` value of an announcement (URL-safe base64 without padding)."""
    return _seal(_key(epoch_key, space_id, window), _aad(window, port), device, nonce)


def open_device(value: bytes, epoch_key: bytes, space_id: bytes, port: int, now: float) -> bytes | None:
    """The device key an announcement names, if it was sealed for this space in a window next to ``now``."""
    return _open(value, now, lambda w: (_key(epoch_key, space_id, w), _aad(w, port)))


def seal_account(account_seed: bytes, window: int, port: int, device: bytes, nonce: bytes | None = None) -> str:
    """The ``a`` value of an announcement: this device's key, for the devices of its own account."""
    return _seal(account_key(account_seed, window), _account_aad(window, port), device, nonce)


def open_account(value: bytes, account_seed: bytes, port: int, now: float) -> bytes | None:
    """The device key an ``a`` value names, if a device of this account sealed it in a window next to ``now``."""
    return _open(value, now, lambda w: (account_key(account_seed, w), _account_aad(w, port)))


def recognise_account_device(properties: dict[bytes, bytes | None], port: int, hosts: list[str],
                             account_seed: bytes, now: float) -> list[PeerAddress]:
    """(pure) The addresses of one resolved announcement, if a device of this account made it; [] otherwise."""
    value = properties.get(b"a")
    if properties.get(b"v") != b"1" or not isinstance(value, bytes) or not port:
        return []
    device = open_account(value, account_seed, port, now)
    if device is None or len(device) != 32:
        return []
    return [PeerAddress(device, h, port) for h in hosts if _is_ipv4(h)]


class LanDiscovery:
    """Announce this device's listener for one space and dial the members it hears of."""

    def __init__(self, sync: SpaceSync, hosts_and_port: Callable[[], tuple[list[str], int | None]]) -> None:
        self.sync = sync
        self.replica: Replica = sync.replica
        self.hosts_and_port = hosts_and_port
        self.name = secrets.token_hex(8)  # random per process: nothing in it identifies the device or space
        self.found: dict[str, float] = {}  # instance name -> when a member's device was recognised in it
        self.ignored = 0  # announcements heard that are not of this space (or do not open)

    def _info(self, window: int) -> object | None:
        from zeroconf import ServiceInfo

        hosts, port = self.hosts_and_port()
        if port is None or not hosts:
            return None
        try:
            _epoch, key = self.replica.current_epoch_key()
        except PermissionDenied:
            return None
        identity = self.replica.identity
        value = seal_device(key, self.replica.space_id, window, port, identity.device_id)
        mine = seal_account(identity.account.seed, window, port, identity.device_id)
        return ServiceInfo(SERVICE_TYPE, f"{self.name}.{SERVICE_TYPE}", port=port,
                           properties={"v": "1", "s": value, "a": mine}, server=f"{self.name}.local.",
                           addresses=[socket.inet_aton(h) for h in hosts if _is_ipv4(h)])

    async def run(self) -> None:
        """Until cancelled. Failures of mDNS itself (no multicast here, no zeroconf) are logged: sync goes on."""
        try:
            await self._run()
        except Exception as e:  # noqa: BLE001 - discovery is a convenience; it must never end a mount
            log.warning("LAN discovery stopped: %s", e)

    async def _run(self) -> None:
        from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[str](256)

        def heard(zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated) and name != \
                    f"{self.name}.{SERVICE_TYPE}":
                def put() -> None:
                    try:
                        send.send_nowait(name)
                    except (trio.WouldBlock, trio.ClosedResourceError):
                        pass  # a flood of announcements: the rest are heard again at their next refresh
                try:
                    token.run_sync_soon(put)
                except trio.RunFinishedError:
                    pass

        try:
            zc = await trio.to_thread.run_sync(lambda: Zeroconf(ip_version=IPVersion.V4Only))
        except OSError as e:
            log.warning("LAN discovery is off: %s", e)
            return
        browser = None
        try:
            browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[heard])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce, zc)
                async for name in receive:
                    nursery.start_soon(self._resolve, zc, name)
        finally:
            with trio.CancelScope(shield=True):
                def close() -> None:
                    if browser is not None:
                        browser.cancel()
                    zc.close()  # unregisters our services (goodbye packets)

                await trio.to_thread.run_sync(close)

    async def _announce(self, zc: object) -> None:
        current: tuple[int, tuple[list[str], int | None]] | None = None
        info = None
        while True:
            window = window_of(time.time())
            state = (window, self.hosts_and_port())
            if state != current:
                new = self._info(window)
                try:
                    if info is not None:
                        await trio.to_thread.run_sync(zc.unregister_service, info)  # type: ignore[attr-defined]
                    if new is not None:
                        # No uniqueness probing (≈ 1 s): the instance name is 64 random bits of this process.
                        await trio.to_thread.run_sync(lambda: zc.register_service(  # type: ignore[attr-defined]
                            new, allow_name_change=True, cooperating_responders=True))
                    info, current = new, state
                except Exception as e:  # noqa: BLE001 - mDNS failing must never stop sync
                    log.warning("mDNS announcement failed: %s", e)
            await trio.sleep(RECHECK_S)

    async def _resolve(self, zc: object, name: str) -> None:
        try:
            info = await trio.to_thread.run_sync(
                lambda: zc.get_service_info(SERVICE_TYPE, name, timeout=RESOLVE_MS))  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - a malformed announcement is someone else's problem
            log.debug("mDNS: %s does not resolve: %s", name, e)
            return
        if info is None or not info.port:
            return
        props = info.properties or {}
        value = props.get(b"s")
        if props.get(b"v") != b"1" or not isinstance(value, bytes):
            self.ignored += 1
            return
        device = None
        for _epoch, key in sorted(self.replica.keys.items(), reverse=True)[:2]:  # current (and previous) epoch
            device = open_device(value, key, self.replica.space_id, info.port, time.time())
            if device is not None:
                break
        if device is None or len(device) != 32:
            self.ignored += 1
            return
        if device == self.replica.identity.device_id:
            return
        self.found[name] = time.monotonic()
        for host in info.parsed_addresses():
            if _is_ipv4(host):
                log.info("mDNS: a member's device at %s:%d", host, info.port)
                self.sync.add_discovered(PeerAddress(device, host, info.port), "mdns")


def find_account_devices(account_seed: bytes, wait: float, *,
                         resolve_ms: int = RESOLVE_MS) -> tuple[list[PeerAddress], int]:
    """(blocking) Listen to the LAN's announcements for ``wait`` seconds and return the listeners of this
    account's devices among them, and how many announcements were heard in all. OSError when there is no
    multicast here (or no zeroconf)."""
    import threading

    from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

    names: set[str] = set()
    lock = threading.Lock()

    def heard(zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            with lock:
                names.add(name)

    zc = Zeroconf(ip_version=IPVersion.V4Only)
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[heard])
        try:
            time.sleep(wait)
        finally:
            browser.cancel()
        with lock:
            heard_names = sorted(names)
        found: list[PeerAddress] = []
        for name in heard_names:
            # Usually answered from the cache: the browser's answers carried the SRV, TXT and A records.
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=resolve_ms)
            if info is None:
                continue
            for address in recognise_account_device(dict(info.properties or {}), info.port or 0,
                                                    info.parsed_addresses(), account_seed, time.time()):
                if address not in found:
                    found.append(address)
        return found, len(heard_names)
    finally:
        zc.close()


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
        return host.count(".") == 3
    except OSError:
        return False
