"""
The router: users, sessions, groups and presence, and who gets which frame.

Sans IO: it talks to connections through :class:`SessionLink` and to other
nodes through an :class:`~improto.backends.interface.IBackend`.
"""

from improto.router.limits import RouterLimits
from improto.router.router import Router
from improto.router.sessions import Session, SessionLink, Ticket

__all__ = ["Router", "RouterLimits", "Session", "SessionLink", "Ticket"]
