"""Free loopback ports for the test clusters (tests/test_multiworker.py, tests/scripts/ps_cluster.py)."""

import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free a moment ago (bound to port 0, then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
