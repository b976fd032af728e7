"""Where a webhook may be sent: the URL and address policy, and a POST pinned to a checked address.

The policy is the same at submit time (``gateway.webhooks.check_target``) and at every delivery attempt and
redirect (``gateway.webhooks.deliver``): https unless ``webhook_allow_http``; a host, no userinfo, a sane
port; and every address the host resolves to must be public. Private, loopback, link-local, shared (CGNAT),
multicast, reserved and unspecified addresses are refused unless inside ``webhook_allow_cidrs``; cloud
metadata addresses are refused even then. IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is judged as IPv4.

The POST connects to the address that was checked, never to the name again, while it sends the name as
Host and SNI and verifies the certificate for it: a DNS answer that changes between the check and the
connect (rebinding) cannot redirect it.

Exceptions::

    TargetRefusedError      the URL or one of its addresses is not allowed (never worth a retry)
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Resolves (host, port) to its addresses as text; injectable so tests can play a DNS server.
Resolver = Callable[[str, int], list[str]]

MAX_URL_CHARS = 2048
# Instance metadata services (AWS, ECS task role, Alibaba, Oracle/GCP/Azure use 169.254.169.254 too): never
# allowed, not even inside webhook_allow_cidrs, since they hand out credentials.
_METADATA = frozenset(ipaddress.ip_address(text) for text in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23", "100.100.100.200"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetRefusedError(Exception):
    """A webhook URL, or an address its host resolves to, that vlq will not send to."""


@dataclass(frozen=True)
class Policy:
    """The rules a webhook target must meet (from the gateway settings)."""

    allow_http: bool = False
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, allow_http: bool, cidrs: Iterable[str]) -> Policy:
        return cls(allow_http=allow_http, allowed=tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs))


@dataclass(frozen=True)
class Target:
    """A parsed webhook URL that passed the URL rules (not yet the address rules)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse(url: str, policy: Policy) -> Target:
    """The target of ``url`` if its scheme, host, userinfo and port are acceptable."""
    if len(url) > MAX_URL_CHARS or not url.isascii() or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise TargetRefusedError(f"the URL must be at most {MAX_URL_CHARS} ASCII characters without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefusedError("the URL is malformed (host or port)") from exc
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise TargetRefusedError("the URL must use https" if not policy.allow_http else "the URL must be http(s)")
    if parts.username is not None or parts.password is not None:
        raise TargetRefusedError("the URL must not carry a user name or password")
    if not parts.hostname:
        raise TargetRefusedError("the URL has no host")
    if port == 0:
        raise TargetRefusedError("the URL's port must be 1-65535")
    return Target(url=url, scheme=parts.scheme, host=parts.hostname.rstrip("."),
                  port=port or (443 if parts.scheme == "https" else 80), path=_path(parts))


def _path(parts: SplitResult) -> str:
    # The fragment never goes on the wire.
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def refusal(address: str, policy: Policy) -> str | None:
    """Why ``address`` may not be sent to, or None if it may."""
    ip = _embedded_v4(ipaddress.ip_address(address.split("%", 1)[0]))
    if ip in _METADATA:
        return "a cloud metadata address"
    if any(ip.version == net.version and ip in net for net in policy.allowed):
        return None
    checks = (("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
              ("unspecified", ip.is_unspecified), ("reserved", ip.is_reserved), ("private", ip.is_private),
              ("not globally routable", not ip.is_global))
    return next((f"a {name} address" for name, hit in checks if hit), None)


def _embedded_v4(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def check_addresses(target: Target, addresses: list[str], policy: Policy) -> str:
    """The address to connect to, if every address of the host is allowed (one bad answer refuses all)."""
    if not addresses:
        raise TargetRefusedError(f"{target.host} does not resolve")
    for address in addresses:
        if (why := refusal(address, policy)) is not None:
            raise TargetRefusedError(f"{target.host} resolves to {why}")
    return addresses[0]


def resolve(host: str, port: int) -> list[str]:
    """The host's TCP addresses (blocking: the webhook worker calls it, the gateway uses its loop's resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return addresses_of(infos)


def addresses_of(infos: Iterable[tuple[object, object, object, object, tuple[object, ...]]]) -> list[str]:
    """Unique addresses, in the resolver's order, from ``getaddrinfo`` answers."""
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Reply:
    """What a receiver answered: its status and, for a redirect, where to."""

    status: int
    location: str | None


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, address: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = address
        self._pinned_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # SNI and certificate check use the name the client gave; only the TCP connect uses the address.
        self.sock = self._pinned_context.wrap_socket(sock, server_hostname=self.host)


def post(target: Target, address: str, body: bytes, headers: dict[str, str], timeout_s: float,
         context: ssl.SSLContext) -> Reply:
    """POST ``body`` to ``target`` over a connection to ``address``; raises OSError on network errors."""
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = _PinnedHTTPS(target, address, timeout_s, context)
    else:
        conn = _PinnedHTTP(target, address, timeout_s)
    try:
        conn.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": target.host_header, "Content-Length": str(len(body)), "Connection": "close",
                            **headers}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        # Only the status and headers matter: the body is never read, so a slow receiver cannot hold us.
        response = conn.getresponse()
        return Reply(status=response.status, location=response.getheader("Location"))
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP reply: {type(exc).__name__}") from exc
    finally:
        conn.close()
