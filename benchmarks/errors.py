"""What a benchmark raises when this machine cannot run it (``bench`` exits 3 and says why)."""

from __future__ import annotations


class BenchUnavailable(Exception):
    """A benchmark's own dependency is missing (e.g. a peer baseline it starts); the message
    says what to install."""
