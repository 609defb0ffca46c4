"""Loopback bind hosts: the demo, and a broker in ``mode: demo``, listen on nothing else."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (``localhost``, an IP address, or an IPv6 address in brackets) is a
    loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
