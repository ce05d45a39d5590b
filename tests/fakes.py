"""The router's test doubles; they live in :mod:`improto.testing` now.

Kept so that ``from tests.fakes import ...`` goes on working; new tests
import from ``improto.testing``.
"""

from improto.testing import FakeClock, FakeLink, make_router

__all__ = ["FakeClock", "FakeLink", "make_router"]
