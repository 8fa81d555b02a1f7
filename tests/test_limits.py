"""The ledger every entry point's caps use (gateway/limits.py): how clients are counted and refused."""

from __future__ import annotations

import pytest

from gateway.limits import Caps, Ledger, Refused, address_key


def test_addresses_are_counted_per_ipv4_address_and_per_ipv6_slash_64():
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("unknown") == "unknown"


def test_caps_are_checked_principal_first_then_address_then_in_all():
    ledger = Ledger("whep", "sessions", Caps(total=3, per_address=2, per_principal=1))
    first = ledger.take("2001:db8::1", "vera")
    with pytest.raises(Refused) as own:
        ledger.take("192.0.2.1", "vera")
    assert (own.value.limit, own.value.http_status, str(own.value)) == (
        "sessions_per_principal", 429, "too many sessions for vera (at most 1)")
    ledger.take("2001:db8::2", "olga")  # the same /64: its second
    with pytest.raises(Refused) as address:
        ledger.take("2001:db8::3", "walt")
    assert (address.value.limit, address.value.everyone) == ("sessions_per_address", False)
    ledger.take("192.0.2.1", "walt")
    with pytest.raises(Refused) as full:
        ledger.take("192.0.2.2", "zoe")
    assert (full.value.limit, full.value.everyone, full.value.http_status) == ("sessions", True, 503)
    first.release()
    first.release()  # idempotent: one place back, not two
    ledger.take("192.0.2.2", "zoe")
    assert ledger.held == 3 and dict(ledger.refused) == {
        "sessions_per_principal": 1, "sessions_per_address": 1, "sessions": 1}
    with pytest.raises(Refused):
        ledger.take("192.0.2.3", "yann")


def test_uncapped_addresses_meet_only_the_total():
    ledger = Ledger("http", "connections", Caps(total=3, per_address=1), uncapped_address=lambda a: a == "10.0.0.1")
    holds = [ledger.take("10.0.0.1") for _ in range(3)]
    with pytest.raises(Refused) as full:
        ledger.take("10.0.0.1")
    assert full.value.limit == "connections"
    for hold in holds:
        hold.release()
    assert ledger.held == 0


@pytest.mark.parametrize("caps, message", [
    ((0, 1), "total: 0 is not a positive integer"),
    ((1, True), "per_address: True is not a positive integer"),
    ((1, 1, 1.5), "per_principal: 1.5 is not a positive integer"),
])
def test_bad_caps_are_refused(caps, message):
    with pytest.raises(ValueError) as error:
        Caps(*caps)
    assert str(error.value) == message
