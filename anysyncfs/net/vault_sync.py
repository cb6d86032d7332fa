"""The device side of the account vault (docs/protocol.md 25.5): fetch it from providers, merge, push it back.

Every request goes over a connection made with a **throwaway identity** (a fresh account and device key per
connection), so a provider cannot tie the vault to the account it serves spaces for on other connections; only the
network address and timing remain.

The device keeps its own merged vault and the highest version any provider served or accepted (``vaults`` table).
A provider that serves a lower version than that is reported (one line; the newer state is kept and pushed back).
A record that does not verify or open is reported and ignored.

A restore can also ask the account's own devices found on the LAN (``init --restore --lan``, docs/protocol.md
70.15). They answer their own account only, so those requests go over a connection made with a passing device
identity of the account (:func:`account_endpoint`) — nothing is hidden from a device of the same account.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from ..core import crypto, keys
from ..core.address import PeerAddress, parse_address
from ..core.vault import (
    EMPTY,
    VaultContents,
    VaultKeys,
    VaultRecord,
    merge,
    open_vault,
    parse_vault_record,
    seal_vault,
)
from ..errors import AnysyncError, IntegrityError, NetworkError, ProtocolError
from ..protocol import messages as m
from ..replica.quota import QuotaExceeded
from ..store.db import Store
from .connection import Connection, RemoteError, while_serving
from .endpoint import Endpoint

log = logging.getLogger(__name__)

VAULT_TIMEOUT = 20.0  # seconds per provider
ROUNDS = 3  # fetch-merge-push rounds when another device pushes at the same moment


def vault_keys(account_seed: bytes) -> VaultKeys:
    return VaultKeys.from_account_seed(account_seed)


def throwaway_endpoint() -> Endpoint:
    """A network identity that belongs to no account: fresh keys, a certificate with a fixed name and time."""
    account, device = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    cert = keys.issue_device_cert(account, device.public, "anysyncfs", 0)
    return Endpoint(keys.Identity(account, device, cert, "anysyncfs"))


def account_endpoint(account: crypto.SigningKey) -> Endpoint:
    """A passing device of the account: a fresh device key certified by the account key. Used by a restore
    (before this device's identity exists) to ask the account's own devices, which answer nobody else."""
    device = crypto.SigningKey.generate()
    cert = keys.issue_device_cert(account, device.public, "restore", time.time_ns() // 1000)
    return Endpoint(keys.Identity(account, device, cert, "restore"))


@dataclass
class Fetched:
    address: str
    record: VaultRecord | None = None
    contents: VaultContents | None = None
    missing: bool = False  # the provider holds no vault under our discovery ID
    error: str | None = None  # unreachable, refused, or the record it served does not verify


@dataclass
class VaultReport:
    contents: VaultContents = EMPTY
    version: int = 0  # of the record this device holds now (0: none)
    providers: int = 0
    reached: int = 0
    stored_on: int = 0  # providers that hold our newest version after this run
    warnings: list[str] = field(default_factory=list)  # rollbacks and forged records: one line each
    errors: list[str] = field(default_factory=list)  # unreachable providers and refusals


async def _ask(address: str, body: object, timeout: float, endpoint: Endpoint | None = None) -> object:
    addr: PeerAddress = parse_address(address)
    with trio.fail_after(timeout):
        conn = await (endpoint or throwaway_endpoint()).dial(addr)
        try:
            return await while_serving(conn, lambda: conn.request(body))
        finally:
            await conn.abort("done")


async def fetch_one(address: str, vkeys: VaultKeys, timeout: float = VAULT_TIMEOUT,
                    endpoint: Endpoint | None = None) -> Fetched:
    """The vault as ``address`` serves it; ``endpoint`` None: over a throwaway identity (a provider)."""
    return await _fetched(address, vkeys, lambda: _ask(address, m.GetVault(vkeys.discovery_id), timeout, endpoint))


async def _fetched(address: str, vkeys: VaultKeys, ask: Callable[[], Awaitable[object]]) -> Fetched:
    """The answer to a ``GetVault`` (sent by ``ask``), checked and opened; every failure is in the result."""
    got = Fetched(address)
    try:
        reply = await ask()
        if not isinstance(reply, m.VaultRecordReply):
            raise ProtocolError(f"expected a vault record, got {type(reply).__name__}")
        got.record = parse_vault_record(bytes(reply.record), vkeys.discovery_id)
        got.contents = open_vault(got.record, vkeys)
    except RemoteError as e:
        if e.code == m.ErrorCode.NOT_FOUND:
            got.missing = True
        else:
            got.error = f"{address}: {e}"
    except IntegrityError as e:  # ProtocolError is one
        got.record, got.contents = None, None
        got.error = f"{address}: served a vault that does not verify ({e}): ignored"
    except (NetworkError, trio.TooSlowError, OSError) as e:
        got.error = f"{address}: {e or 'timed out'}"
    return got


async def push_one(address: str, raw: bytes, timeout: float = VAULT_TIMEOUT) -> m.VaultStored | str:
    try:
        reply = await _ask(address, m.PutVault(raw), timeout)
    except (AnysyncError, trio.TooSlowError, OSError) as e:
        return f"{address}: {e or 'timed out'}"
    if not isinstance(reply, m.VaultStored):
        return f"{address}: expected VaultStored, got {type(reply).__name__}"
    return reply


async def fetch_all(addresses: Sequence[str], vkeys: VaultKeys, timeout: float = VAULT_TIMEOUT,
                    endpoints: Sequence[Endpoint | None] | None = None) -> list[Fetched]:
    results: list[Fetched] = [Fetched(a) for a in addresses]

    async def one(i: int) -> None:
        results[i] = await fetch_one(addresses[i], vkeys, timeout, endpoints[i] if endpoints else None)

    async with trio.open_nursery() as nursery:
        for i in range(len(addresses)):
            nursery.start_soon(one, i)
    return results


def providers_of(store: Store, contents: VaultContents) -> list[str]:
    """Every provider of every space of the account: the peers recorded here and those the vault lists, less the
    addresses a sync engine found to be members' devices (``peers_seen``): a device answers no throwaway identity
    (it would only count as a provider not reached); the account's own devices get the vault over their sync
    sessions instead (:func:`sync_vault_with_device`)."""
    found = {row.address for row in store.all_peers()}
    found.update(p for e in contents.live() for p in e.peers)
    devices = {seen.address for row in store.spaces() for seen in store.peers_seen(row.id) if seen.kind == "device"}
    return sorted(found - devices)


def local_state(store: Store, vkeys: VaultKeys) -> tuple[VaultContents, int, int, bytes | None]:
    """(contents, version, highest version seen, record) of this device's own vault; empty when it has none."""
    row = store.vault(vkeys.discovery_id)
    if row is None:
        return EMPTY, 0, 0, None
    record = parse_vault_record(row.record, vkeys.discovery_id)
    return open_vault(record, vkeys), row.version, row.highest_seen, row.record


def keep_from_device(store: Store, vkeys: VaultKeys, raw: bytes, max_len: int) -> tuple[bool, int]:
    """(blocking) A record another device of this account pushed to this device's listener (70.16): (stored, the
    version held now). Checked as a provider checks a record — bounds (``max_len``: a provider's per-vault quota,
    ``QuotaExceeded``), the discovery ID its signer's and this account's, the signature (``IntegrityError``: nothing
    is stored) — then opened. Kept only when its version is above the one held (never an older or equal one) and
    it loses no entry of the vault held here (the merge of both is the pushed one); else (False, version held): the
    pusher fetches this device's record, merges and pushes a newer one."""
    if len(raw) > max_len:
        raise QuotaExceeded(f"a vault may hold at most {max_len} bytes", max_len)
    record = parse_vault_record(raw, vkeys.discovery_id)
    contents = open_vault(record, vkeys)
    with store.transaction():
        row = store.vault(vkeys.discovery_id)
        if row is not None:
            if row.version >= record.version:
                return False, row.version
            ours = open_vault(parse_vault_record(row.record, vkeys.discovery_id), vkeys)
            if merge(ours, contents) != contents:
                return False, row.version
        store.put_vault(vkeys.discovery_id, record.version, raw, max(record.version, row.highest_seen if row else 0))
    return True, record.version


def rollback_line(address: str, served: int, highest: int) -> str:
    return (f"vault rollback: {address} served vault version {served}, older than version {highest} seen before "
            f"(kept the newer one)")


def _choose(merged: VaultContents, top: int, candidates: list[tuple[int, bytes, VaultContents]],
            held: list[tuple[int, bytes]], vkeys: VaultKeys) -> tuple[int, bytes]:
    """The record to hold and push: an existing one at version ``top`` that says ``merged`` (and that no provider
    holds another record of at that version or above), else a new one at ``top`` + 1."""
    for version, raw, contents in candidates:
        if version == top and contents == merged and all(r == raw for v, r in held if v >= version):
            return version, raw
    return top + 1, seal_vault(merged, vkeys, top + 1, crypto.random_bytes(crypto.XNONCE_LEN))


async def sync_vault(store: Store, vkeys: VaultKeys,
                     change: Callable[[VaultContents], VaultContents] | None = None, *,
                     timeout: float = VAULT_TIMEOUT) -> VaultReport:
    """Fetch the vault from every provider, merge it with this device's (and apply ``change``), store the result
    here and push it to every provider that lacks it. A provider's failure never raises: the report says."""
    return await _sync_rounds(
        store, vkeys, change,
        addresses=lambda contents: providers_of(store, contents),
        fetch=lambda addresses: fetch_all(addresses, vkeys, timeout),
        push=lambda address, raw: push_one(address, raw, timeout),
        run=trio.to_thread.run_sync)


async def sync_vault_with_device(conn: Connection, store: Store, vkeys: VaultKeys,
                                 run: Callable[..., Awaitable[object]]) -> VaultReport:
    """The same fetch-merge-push with one device of this account, over a session already open with it (the sync
    engine's, docs/protocol.md 70.16): ``GetVault`` and ``PutVault`` on ``conn``. ``run``: how the store is
    called (the engine's runner). The caller checked that the peer is a device of this account."""
    address = conn.label

    async def fetch(_addresses: Sequence[str]) -> list[Fetched]:
        return [await _fetched(address, vkeys, lambda: conn.request(m.GetVault(vkeys.discovery_id)))]

    async def push(_address: str, raw: bytes) -> m.VaultStored | str:
        try:
            reply = await conn.request(m.PutVault(raw))
        except AnysyncError as e:
            return f"{address}: {e}"
        if not isinstance(reply, m.VaultStored):
            return f"{address}: expected VaultStored, got {type(reply).__name__}"
        return reply

    return await _sync_rounds(store, vkeys, None, addresses=lambda _contents: [address], fetch=fetch, push=push,
                              run=run, create=False)


async def _sync_rounds(store: Store, vkeys: VaultKeys, change: Callable[[VaultContents], VaultContents] | None, *,
                       addresses: Callable[[VaultContents], list[str]],
                       fetch: Callable[[Sequence[str]], Awaitable[list[Fetched]]],
                       push: Callable[[str, bytes], Awaitable[m.VaultStored | str]],
                       run: Callable[..., Awaitable[object]], create: bool = True) -> VaultReport:
    """Fetch, merge (the CRDT), choose the record (:func:`_choose`), keep it here and push it where it lacks: for
    providers and for the account's own devices alike, which differ only in ``addresses``, ``fetch`` and ``push``.
    ``create`` False: when neither this device nor any source has a vault, nothing is made (no empty record)."""
    local, version, highest, local_raw = await run(local_state, store, vkeys)
    report = VaultReport(contents=local, version=version)
    for _round in range(ROUNDS):
        sources = addresses(local if change is None else change(local))
        fetched = await fetch(sources)
        report.providers, report.reached = len(sources), sum(f.error is None for f in fetched)
        report.warnings += [f.error for f in fetched if f.error and "does not verify" in f.error]
        report.errors = [f.error for f in fetched if f.error and "does not verify" not in f.error]
        remote = [(f.address, f.record, f.contents) for f in fetched if f.record is not None and f.contents is not None]
        if not create and not remote and local_raw is None:
            break
        for address, record, _ in remote:
            if record.version < highest:
                report.warnings.append(rollback_line(address, record.version, highest))
        highest = max([highest, *(r.version for _, r, _ in remote)])
        # The change goes on top of everything known (its Lamport counter above every entry seen), once.
        merged = merge(local, *(c for _, _, c in remote))
        if change is not None:
            merged, change = change(merged), None
        candidates = [(r.version, r.raw, c) for _, r, c in remote]
        if local_raw is not None:
            candidates.append((version, local_raw, local))
        held = [(r.version, r.raw) for _, r, _ in remote]
        damaged = [f.address for f in fetched if f.error and "does not verify" in f.error]
        if damaged:  # a provider holds bytes that do not verify: a new version replaces them there
            held.append((max(highest, version), b""))
        version, raw = _choose(merged, max(highest, version), candidates, held, vkeys)
        local_raw, local = raw, merged
        await run(store.put_vault, vkeys.discovery_id, version, raw, highest)
        report.contents, report.version = merged, version
        holding = {f.address for f in fetched if f.record is not None and f.record.raw == raw}
        lacking = [f.address for f in fetched if (f.error is None or f.address in damaged)
                   and f.address not in holding]
        stale = False
        stored = len(holding)

        async def push_to(address: str) -> None:
            nonlocal stale, stored, highest
            reply = await push(address, raw)
            if isinstance(reply, str):
                report.errors.append(reply)
            elif reply.stored:
                stored += 1
                highest = max(highest, reply.version)
            else:
                stale = True  # it holds this version or a newer one (another device pushed meanwhile): again

        async with trio.open_nursery() as nursery:
            for address in lacking:
                nursery.start_soon(push_to, address)
        await run(store.note_vault_seen, vkeys.discovery_id, highest)
        report.stored_on = stored
        if not stale:
            break
    return report


def restore_fetch(addresses: Sequence[str], vkeys: VaultKeys, timeout: float = VAULT_TIMEOUT, *,
                  devices: Sequence[str] = (), account: crypto.SigningKey | None = None) -> list[Fetched]:
    """(blocking) The vault as the given providers serve it — and the account's own ``devices`` found on the LAN,
    asked as a passing device of ``account`` — for ``init --restore`` (no home exists yet)."""
    if devices and account is None:
        raise ValueError("asking the account's devices needs the account key")
    endpoints: list[Endpoint | None] = [None] * len(addresses)
    endpoints += [account_endpoint(account) for _ in devices] if account is not None else []
    return trio.run(fetch_all, [*addresses, *devices], vkeys, timeout, endpoints)


def older_records(fetched: Sequence[Fetched]) -> list[str]:
    """(pure) One rollback line for each source that served an older version than the highest any source served.
    A restore still merges every record that verifies (the vault is a CRDT with tombstones: an older record adds
    nothing a newer one removed, and a record from a device that was offline may hold a space no other has); the
    line tells the user which source is behind or lies."""
    found = [f.record for f in fetched if f.record is not None and f.contents is not None]
    if not found:
        return []
    top = max(r.version for r in found)
    return [rollback_line(f.address, f.record.version, top) for f in fetched
            if f.record is not None and f.contents is not None and f.record.version < top]


def summary(report: VaultReport) -> str:
    if not report.providers:
        return f"vault version {report.version} kept on this device (no provider recorded yet)"
    return f"vault version {report.version} on {report.stored_on}/{report.providers} providers"


