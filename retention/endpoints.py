"""Which addresses the API token may be sent to, and which the admin surface may listen on.

``base_url`` must be https, or plain http on loopback only (the emulator); link-local and cloud
metadata addresses are refused whatever the scheme, in every spelling a resolver accepts, and so
are credentials in the URL. Pure checks: no name is resolved, nothing is connected.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://app.customgpt.ai/api/v1/"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) or the name localhost."""
    if host.lower().rstrip(".") == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


# Cloud metadata services answer on these; no API token may ever be sent there.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "169.254.169.254"})
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254")})
_HOST_NAME = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$"
)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host stands for, if it is one: dotted quads, IPv6, and the legacy IPv4
    forms a resolver also accepts ('2852039166', '0xa9fea9fe', '169.254.43518')."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_base_url(value: str) -> None:
    """The API's address: https, or plain http on loopback only (the emulator); never a
    link-local or cloud metadata address; never credentials in the URL."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("the URL has spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if "@" in parts.netloc:  # said without echoing the URL: it may hold a password
        raise ValueError(
            "credentials in the URL (user:password@) are refused: the API token goes in env "
            "CUSTOMGPT_API_TOKEN or [api] token_file"
        )
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"must be an https URL such as '{DEFAULT_BASE_URL}', got {value!r}")
    address = _ip(host)
    if address is None and not _HOST_NAME.match(host):
        raise ValueError(f"invalid host {host!r} in {value!r}")
    if port == 0:
        raise ValueError(f"port 0 in {value!r}: give a port from 1 to 65535, or none")
    if parts.query or parts.fragment or value.rstrip().endswith(("?", "#")):
        raise ValueError(f"must not have a query or a fragment, got {value!r}")
    if host in METADATA_HOSTS or address in METADATA_ADDRESSES:
        raise ValueError(f"{host} is a cloud metadata address, never the CustomGPT API")
    if address is not None and address.is_link_local:
        raise ValueError(f"{host} is a link-local address, never the CustomGPT API")
    if address is not None and (address.is_unspecified or address.is_multicast):
        raise ValueError(f"{host} is not an address to send requests to")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(
            f"plain http would send the API token in clear: use https (http is allowed on "
            f"loopback only, e.g. the emulator on 127.0.0.1), got {value!r}"
        )
