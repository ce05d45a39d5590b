"""
Names of backend channels and presence scopes.

The router chooses them; a backend may prefix them but never parses them.
"""

from __future__ import annotations

#: Presence scope of users connected anywhere in the cluster.
ONLINE_SCOPE = "online"


def group_channel(group: str) -> str:
    return "group:" + group


def user_channel(user: str) -> str:
    return "user:" + user


def echo_channel(session_id: str) -> str:
    return "echo:" + session_id


def group_scope(group: str) -> str:
    return "group:" + group
