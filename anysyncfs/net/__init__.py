"""Networking: TLS transport, peers, sync loops and the node server (trio)."""
