"""
Stop stock Autobahn from formatting debug-log text that nobody logs (and
from setting up a native masker for every small client frame).

Autobahn calls ``self.log.debug(..., func=hltype(self.sendData), ...)`` on
every frame written, on every read and several times per connection, and
``self.log.debug(..., attrs=pformat(settings))`` once per
connection. With debug logging off txaio's ``debug`` is a no-op, but Python
has already evaluated the arguments: ``hltype()`` (``inspect`` checks and
string building) ~0.8 µs, the ``pformat`` of ~30 settings ~100 µs
(``benchmarks/micro.py``). No public option avoids that: ``logOctets``,
``logFrames`` and ``trackTimings`` are off already, and a null logger (or
``txaio.set_global_log_level``) only skips the call, not its arguments.

So :func:`install` rebinds two helper names in the two Autobahn modules
that call them (:data:`PATCHED`):

* ``hltype`` to :func:`memo_hltype`: the same text, remembered per function
  or class (it depends on nothing else), so a call costs a dict look-up;
* ``hlval`` to :func:`lazy_hlval`, a :class:`LazyText`: ``f"{val}"`` is
  cheap for the peer's address, but every closed connection passes its
  ``connectionLost`` reason, a ``Failure``, whose text is a formatted
  traceback (about 10 µs a connection);
* ``pformat`` (of ``autobahn.websocket.protocol``) to :func:`lazy_pformat`:
  for a list, the settings dump, a :class:`LazyText` that formats only if a
  log observer renders it (Autobahn's own ``_LazyHexFormatter`` idiom);
  anything else, as ``Timings.__str__``'s dict, is formatted at once;
* ``create_xor_masker`` (of ``autobahn.websocket.protocol``) to
  :func:`improto.web.framing.create_xor_masker`: the same unmasked bytes,
  by integer XOR for frames up to 1 KiB instead of a native masker whose
  set-up costs more than a chat frame's unmasking (see that module).

No Autobahn method is re-stated or skipped here and no private attribute
is read, so whatever an upgrade adds to Autobahn's methods still runs;
with debug logging on, the logged text is the same. The one method improto
does re-state, for the per-frame ``log.debug`` call itself, is the
open-connection path of ``sendData`` (``LinkProtocol.sendData``, while
:data:`active`), hash-pinned like ``hltype``.

What this relies on is pinned by ``tests/web/test_autobahn_quiet.py``: the
names are those modules' globals and Autobahn's own helpers, ``hltype``'s
source is the one reviewed, and every ``pformat`` of a list there is an
argument of a ``log`` call. The upstream fix, which would make this module
unnecessary, is ``docs/upstream/autobahn-lazy-debug-log.patch``.
"""

from __future__ import annotations

import importlib
import inspect
import pprint
from collections.abc import Callable
from typing import Any

import autobahn.util
import autobahn.websocket.xormasker
from twisted.logger import Logger

from improto.web import framing

_log = Logger()

#: Autobahn module -> the helper names in it that are rebound.
PATCHED: dict[str, tuple[str, ...]] = {
    "autobahn.websocket.protocol": ("hltype", "hlval", "pformat", "create_xor_masker"),
    "autobahn.twisted.websocket": ("hltype", "hlval"),
}

#: The helpers those names are bound to in stock Autobahn.
STOCK: dict[str, Callable[..., Any]] = {
    "hltype": autobahn.util.hltype,
    "hlval": autobahn.util.hlval,
    "pformat": pprint.pformat,
    "create_xor_masker": autobahn.websocket.xormasker.create_xor_masker,
}


class LazyText:
    """Text formatted on first use by ``str()``, ``format()`` or ``repr()``."""

    __slots__ = ("_args", "_fn", "_kwargs")

    def __init__(self, fn: Callable[..., str], *args: Any, **kwargs: Any) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs

    def __str__(self) -> str:
        return self._fn(*self._args, **self._kwargs)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return repr(str(self))


_hltype_texts: dict[Any, str] = {}


def memo_hltype(obj: Any) -> str:
    """``autobahn.util.hltype(obj)``, remembered for functions and classes
    (a bound method's text is its function's)."""
    key = getattr(obj, "__func__", obj)
    try:
        return _hltype_texts[key]
    except (KeyError, TypeError):
        pass
    text = autobahn.util.hltype(obj)
    if inspect.isfunction(key) or inspect.isclass(key):
        _hltype_texts[key] = text
    return text


def lazy_pformat(obj: Any, *args: Any, **kwargs: Any) -> Any:
    if type(obj) is list:
        return LazyText(pprint.pformat, obj, *args, **kwargs)
    return pprint.pformat(obj, *args, **kwargs)


def lazy_hlval(val: Any, color: str = "white", bold: bool = True) -> LazyText:
    return LazyText(autobahn.util.hlval, val, color, bold)


REBOUND: dict[str, Callable[..., Any]] = {
    "hltype": memo_hltype,
    "hlval": lazy_hlval,
    "pformat": lazy_pformat,
    "create_xor_masker": framing.create_xor_masker,
}

#: Whether improto's writes skip Autobahn's per-frame ``log.debug`` call
#: (``LinkProtocol.sendData``); on with :func:`install`, off with
#: :func:`uninstall`, so that "stock" in the benchmarks is all stock.
active = False


def _bindings() -> list[tuple[Any, str]]:
    return [(importlib.import_module(m), name) for m, names in PATCHED.items() for name in names]


def install() -> list[str]:
    """
    Rebind the helpers (idempotent). A name that is not bound to Autobahn's
    own helper (a new Autobahn, or someone else's patch) is left alone and
    returned, with a warning: the server runs as on stock Autobahn, and the
    tests fail until this module is re-reviewed.
    """
    global active
    active = True
    skipped = []
    for module, name in _bindings():
        current = getattr(module, name, None)
        if current is REBOUND[name]:
            continue
        if current is not STOCK[name]:
            skipped.append(f"{module.__name__}.{name}")
            continue
        setattr(module, name, REBOUND[name])
    if skipped:
        _log.warn(
            "Autobahn's {names} are not the helpers improto/web/quiet.py knows: left as they "
            "are (debug-log text is formatted eagerly, as in stock Autobahn)",
            names=", ".join(skipped),
        )
    return skipped


def uninstall() -> None:
    """Stock Autobahn again (benchmarks' "before", tests)."""
    global active
    active = False
    for module, name in _bindings():
        if getattr(module, name, None) is REBOUND[name]:
            setattr(module, name, STOCK[name])


def installed() -> bool:
    return all(getattr(module, name, None) is REBOUND[name] for module, name in _bindings())
