"""improto.client stands apart: nothing else in improto imports it, and it
takes only the protocol's names and rules from the server side."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "improto"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_other_improto_package_imports_the_client() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "client" not in path.relative_to(PACKAGE).parts[:1]
        and any(name.startswith("improto.client") for name in imported_modules(path))
    ]
    assert offenders == []


def test_the_client_uses_only_the_protocol_from_improto() -> None:
    used = {
        name
        for path in (PACKAGE / "client").glob("*.py")
        for name in imported_modules(path)
        if name.startswith("improto.") and not name.startswith("improto.client")
    }
    assert used == {"improto.protocol.codec"}
