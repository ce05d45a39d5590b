"""
``improto-chat``: a terminal client for improto's native dialect.

The logic is sans IO (``commands`` parses what the user types, ``state``
turns server frames and user input into display lines and frames,
``render`` lays lines out for the terminal, ``backoff`` paces reconnects);
``shell`` is the thin asyncio layer that owns the socket and the
prompt_toolkit prompt. No other improto package imports this one.
"""
