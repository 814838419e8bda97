"""Fakes owned by the test suite (they speak the providers' real wire formats)."""

from .provider import FakeProvider, Recorded

__all__ = ["FakeProvider", "Recorded"]
