"""node.firewall helpers: resolver and binding endpoint discovery, the refused ranges."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from edgerun.node.firewall import PRIVATE_V4, PRIVATE_V6, binding_endpoints, resolvers


def test_resolvers_reads_nameserver_lines_only(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n"
        "nameserver not-an-ip\noptions ndots:2\n"
    )
    assert resolvers(str(conf)) == [("10.0.0.2", 53), ("fe80::1", 53)]


def test_resolvers_of_a_missing_file_is_empty(tmp_path):
    assert resolvers(str(tmp_path / "missing")) == []


def test_binding_endpoints_resolve_every_server_of_a_nats_url():
    got = binding_endpoints(["nats://127.0.0.1:4223,nats://127.0.0.2:4224", "127.0.0.3"])
    assert got == [("127.0.0.1", 4223), ("127.0.0.2", 4224), ("127.0.0.3", 4222)]


def test_an_unresolvable_endpoint_is_left_out():
    assert binding_endpoints(["nats://no-such-host.invalid:4222"]) == []


@given(st.ip_addresses(v=4))
def test_a_public_ipv4_address_is_outside_every_refused_range(address):
    refused = any(address in ipaddress.ip_network(n) for n in PRIVATE_V4)
    # Everything the stdlib calls global is reachable but multicast (refused on
    # purpose); loopback, private and link-local addresses are refused.
    if address.is_global and not address.is_multicast:
        assert not refused
    inner = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
    if any(address in ipaddress.ip_network(n) for n in inner):
        assert refused


def test_loopback_and_link_local_v6_are_refused():
    for text in ("::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1"):
        address = ipaddress.ip_address(text)
        assert any(address in ipaddress.ip_network(n) for n in PRIVATE_V6), text
