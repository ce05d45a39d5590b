"""
The wire protocol, sans IO: what clients send and what they are sent.

Nothing here imports Twisted's reactor, Autobahn or a backend; the router
and the WebSocket layer both build on it.
"""
