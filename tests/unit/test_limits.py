"""Connection slots of a listening node (anysyncfs/net/limits.py): per address, in total, IPv6 by /64."""

from __future__ import annotations

import pytest

from anysyncfs.net.limits import ConnectionLimits, ConnectionSlots, address_key


def test_addresses_are_counted_by_host_and_ipv6_by_its_64() -> None:
    assert address_key("127.0.0.1") == "127.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"  # an IPv4 client on a dual-stack socket


def test_slots_refuse_over_either_bound_and_free_on_release() -> None:
    slots = ConnectionSlots(ConnectionLimits(max_per_address=2, max_connections=3))
    assert slots.acquire("192.0.2.1") is None and slots.acquire("192.0.2.1") is None
    assert slots.acquire("192.0.2.1") == "2 connections open from 192.0.2.1"
    assert slots.acquire("192.0.2.2") is None
    assert slots.acquire("192.0.2.3") == "3 connections open in total"
    assert slots.refused == 2 and slots.total == 3
    slots.release("192.0.2.1")
    assert slots.count("192.0.2.1") == 1 and slots.acquire("192.0.2.3") is None
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        slots.release(host)
    assert slots.total == 0 and slots.count("192.0.2.1") == 0


def test_refusals_are_logged_once_per_address_per_interval() -> None:
    slots = ConnectionSlots(ConnectionLimits())
    assert slots.should_log("192.0.2.1") and not slots.should_log("192.0.2.1")
    assert slots.should_log("192.0.2.2")


@pytest.mark.parametrize("field", ["max_in_flight_bytes", "max_in_flight_requests", "max_per_address",
                                   "max_connections"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ConnectionLimits(**{field: 0})
