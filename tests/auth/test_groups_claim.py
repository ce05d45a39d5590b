"""The router enforces a session's allowed groups at join (sans IO)."""

from __future__ import annotations

from improto.protocol import codec
from tests.fakes import FakeLink, make_router


def joined(link: FakeLink, router, session, group: str, id_: str) -> dict:
    router.receive_text(session, f'{{"type": "join", "group": "{group}", "id": "{id_}"}}', 40)
    return [f for f in link.take() if f.get("id") == id_][0]


def test_a_join_outside_the_allowed_groups_is_not_allowed() -> None:
    router = make_router()
    link = FakeLink()
    session = router.connect(link, "alice", native=True, allowed_groups=frozenset({"dev", codec.LOBBY}))
    link.take()
    assert session.groups == {codec.LOBBY}
    assert joined(link, router, session, "dev", "1") == {"type": "ack", "id": "1"}
    refused = joined(link, router, session, "ops", "2")
    assert (refused["type"], refused["code"]) == ("error", "not_allowed")
    assert refused["reason"] == "You may not join group 'ops'."
    assert "ops" not in session.groups
    # Leaving and re-joining the lobby stays possible.
    router.receive_text(session, '{"type": "leave", "group": "lobby", "id": "3"}', 40)
    assert joined(link, router, session, "lobby", "4") == {"type": "ack", "id": "4"}


def test_no_allowed_groups_means_any_group() -> None:
    router = make_router()
    link = FakeLink()
    session = router.connect(link, "bob", native=True)
    link.take()
    assert joined(link, router, session, "anything", "1") == {"type": "ack", "id": "1"}


def test_a_refused_join_leaves_others_unaffected() -> None:
    router = make_router()
    alice_link, bob_link = FakeLink(), FakeLink()
    alice = router.connect(alice_link, "alice", native=True, allowed_groups=frozenset({codec.LOBBY}))
    bob = router.connect(bob_link, "bob", native=True)
    assert joined(alice_link, router, alice, "ops", "1")["code"] == "not_allowed"
    assert joined(bob_link, router, bob, "ops", "2") == {"type": "ack", "id": "2"}
    assert "ops" in bob.groups and "ops" not in alice.groups
