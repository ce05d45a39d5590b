"""The strictness tests run twice: with orjson (as installed) and with the json module alone."""

from __future__ import annotations

import pytest

from improto.protocol import codec, jsontext


@pytest.fixture(params=["orjson", "json"])
def json_library(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Use with ``pytestmark = pytest.mark.usefixtures("json_library")``."""
    if request.param == "orjson" and jsontext.fast_loads is None:
        pytest.skip("orjson is not installed")
    if request.param == "json":
        monkeypatch.setattr(jsontext, "fast_loads", None)
        monkeypatch.setattr(codec, "encode_texts", codec.encode)
    return str(request.param)
