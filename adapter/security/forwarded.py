"""The caller's address: the peer's, or the one a trusted reverse proxy forwarded."""

from ipaddress import IPv4Network, IPv6Network, ip_address

Networks = list[IPv4Network | IPv6Network]


def _trusted(address: str, proxies: Networks) -> bool:
    try:
        parsed = ip_address(address.strip())
    except ValueError:
        return False
    return any(parsed in network for network in proxies)


def caller_address(peer: str | None, forwarded_for: str | None, proxies: Networks) -> str | None:
    """The peer's address, unless the peer is a trusted proxy: then the nearest address in
    `X-Forwarded-For` that is not itself a trusted proxy (the rightmost untrusted one; those
    further left were written by the caller and prove nothing)."""
    if peer is None or not forwarded_for or not _trusted(peer, proxies):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if not hop:
            continue
        try:
            ip_address(hop)
        except ValueError:
            return peer  # a forged or broken header: the proxy itself is the caller we know
        if not _trusted(hop, proxies):
            return hop
    return peer
