"""secd.nats_server: the ports it hands out."""

from __future__ import annotations

import socket

from secd.nats_server import free_port


def test_free_port_never_hands_out_a_port_twice_in_one_process() -> None:
    """A stack takes its client, gateway and route ports one after the other before any server
    binds them; the kernel may offer a just-closed port again, and two of them were once equal
    (a cluster node failed at start: 'Error listening on router port ... address already in
    use')."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: nobody listens on it
