"""``[network] outbound = "public"``: deployments may reach the internet, not the node's
networks.

A deployment's processes run as its own uid (see ``wiring.deployment_uid``), so the
kernel can tell their packets apart: one nftables table, ``inet edgerun``, shared by
every node on the host, rejects packets from the uids in its ``public_uids`` set to
loopback, private, link-local, shared, multicast and reserved addresses (the node's
own ports and control plane, cloud metadata at 169.254.169.254, the LAN) before they
leave. What a deployment needs on those networks is let through by address and port:
the resolvers of ``/etc/resolv.conf`` (port 53) and the servers its bindings use (the
NATS URL of a KV namespace).

Needs root and the ``nft`` program (Debian's ``nftables``); ``Firewall.detect``
returns None without them and the caller warns that ``public`` is not enforced.
A uid is added when its deployment opens with ``public`` and removed when it opens
with ``all`` or ``none``; an element left behind by a node that died keeps confining
a uid only edgerun uses, which is the safe side.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = [
    "PRIVATE_V4",
    "PRIVATE_V6",
    "Firewall",
    "apply_outbound",
    "binding_endpoints",
    "resolvers",
]

_log = logging.getLogger("edgerun.node")

PRIVATE_V4: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
"""IPv4 ranges a ``public`` deployment may not reach (RFC 6890 special-purpose)."""

PRIVATE_V6: tuple[str, ...] = (
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)
"""IPv6 ranges a ``public`` deployment may not reach (loopback, mapped IPv4, ULA,
link-local, multicast)."""

_TABLE = "inet edgerun"


def _ruleset() -> str:
    v4 = ", ".join(PRIVATE_V4)
    v6 = ", ".join(PRIVATE_V6)
    reject = "reject with icmpx type admin-prohibited"
    return f"""
add table {_TABLE}
add set {_TABLE} public_uids {{ typeof meta skuid; }}
add set {_TABLE} allowed4 {{ type ipv4_addr . inet_service; }}
add set {_TABLE} allowed6 {{ type ipv6_addr . inet_service; }}
add chain {_TABLE} output {{ type filter hook output priority 0; policy accept; }}
add rule {_TABLE} output meta skuid @public_uids ip daddr . th dport @allowed4 accept
add rule {_TABLE} output meta skuid @public_uids ip6 daddr . th dport @allowed6 accept
add rule {_TABLE} output meta skuid @public_uids ip daddr {{ {v4} }} {reject}
add rule {_TABLE} output meta skuid @public_uids ip6 daddr {{ {v6} }} {reject}
"""


class Firewall:
    """The host's ``inet edgerun`` table, driven through ``nft`` (see the module
    docstring). Methods raise ``OSError`` when ``nft`` refuses a change."""

    def __init__(self, nft: str) -> None:
        self.nft = nft
        self._ready = False

    @classmethod
    def detect(cls) -> Firewall | None:
        """A ``Firewall`` when this process is root and ``nft`` is installed, else None."""
        nft = shutil.which("nft") or next(
            (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
        )
        if os.geteuid() != 0 or nft is None:
            return None
        return cls(nft)

    def _run(self, script: str) -> str:
        done = subprocess.run(
            [self.nft, "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise OSError(f"nft refused the change: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def ensure(self) -> None:
        """Create the table, its sets and rules unless they exist already."""
        if self._ready:
            return
        listed = subprocess.run(
            [self.nft, "list", "chain", "inet", "edgerun", "output"],
            capture_output=True,
            text=True,
            check=False,
        )
        if listed.returncode != 0 or "reject" not in listed.stdout:
            self._run(_ruleset())
        self._ready = True

    def confine(self, uid: int, allowed: Iterable[tuple[str, int]] = ()) -> None:
        """Refuse ``uid`` the private ranges, except the ``(address, port)`` pairs in
        ``allowed``."""
        self.ensure()
        lines = [f"add element {_TABLE} public_uids {{ {int(uid)} }}"]
        for address, port in allowed:
            ip = ipaddress.ip_address(address)
            family = "allowed4" if ip.version == 4 else "allowed6"
            lines.append(f"add element {_TABLE} {family} {{ {ip} . {int(port)} }}")
        self._run("\n".join(lines) + "\n")

    def release(self, uid: int) -> None:
        """Stop confining ``uid`` (its deployment now opens with ``all`` or ``none``)."""
        self.ensure()
        # "delete element" fails when absent: add first so the pair always succeeds.
        self._run(
            f"add element {_TABLE} public_uids {{ {int(uid)} }}\n"
            f"delete element {_TABLE} public_uids {{ {int(uid)} }}\n"
        )


def resolvers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The DNS servers of ``path`` as ``(address, 53)`` pairs (none if unreadable)."""
    found: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        found.append((str(ipaddress.ip_address(parts[1].split("%")[0])), 53))
                    except ValueError:
                        continue
    except OSError:
        pass
    return found


def binding_endpoints(urls: Iterable[str]) -> list[tuple[str, int]]:
    """``(address, port)`` of every server named in ``urls`` (``nats://h:p,h2:p2``),
    resolved now; names that do not resolve are left out."""
    pairs: list[tuple[str, int]] = []
    for url in urls:
        for part in url.split(","):
            split = urlsplit(part if "://" in part else f"nats://{part}")
            if not split.hostname:
                continue
            port = split.port or 4222
            try:
                infos = socket.getaddrinfo(split.hostname, port, type=socket.SOCK_STREAM)
            except OSError:
                continue
            pairs.extend((str(info[4][0]), port) for info in infos)
    return pairs


_firewall: Firewall | None = None
_detected = False


def apply_outbound(uid: int, outbound: str, binding_urls: Iterable[str]) -> bool:
    """Make ``uid``'s outbound rule match its deployment's ``[network] outbound``.

    Returns whether the rule is enforced: False (with one warning per node) for
    ``public`` on a host without root or ``nft``. ``all`` and ``none`` need no rule
    here (``none`` is a network namespace, see ``runtime.isolate.confine``).
    """
    global _firewall, _detected
    if not _detected:
        _detected = True
        _firewall = Firewall.detect()
    if _firewall is None:
        if outbound == "public":
            _log.warning(
                '[network] outbound = "public" is not enforced on this host (it needs a '
                "node run as root and nftables' nft program): deployments can reach "
                "loopback and private addresses"
            )
            return False
        return True
    if outbound == "public":
        _firewall.confine(uid, [*resolvers(), *binding_endpoints(binding_urls)])
    else:
        _firewall.release(uid)
    return True
