"""
``benchmarks/run.py --smoke``: the peers benchmark end to end with tiny
counts (improto and the Autobahn ceiling, one run), so the command, the
compiled load generator and every table row keep working. It checks that
each row was measured, not how fast anything is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
import peers_report  # noqa: E402

SERVERS = ["improto (memory)", "autobahn-ceiling"]


def rows_of(output: str) -> dict[tuple[str, str], list[str]]:
    """The main table's cells by (scenario, server)."""
    lines = output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("scenario "))
    widths = [len(w) for w in lines[start + 1].split("  ")]
    table = {}
    for ln in lines[start + 2:]:
        if not ln.strip():
            break
        cells, pos = [], 0
        for w in widths:
            cells.append(ln[pos:pos + w].strip())
            pos += w + 2
        table[(cells[0], cells[1])] = cells[2:]
    return table


@pytest.mark.slow
def test_smoke_run_measures_every_row(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--no-boost", "--results", str(results)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = rows_of(proc.stdout)
    labels = peers_report.labels(peers.PARAMS["smoke"])
    for key, _, _ in peers.ROWS:
        for server in SERVERS:
            cells = table.get((labels[key], server))
            assert cells is not None, f"no row {labels[key]!r} / {server!r} in:\n{proc.stdout}"
            result, p50 = cells[0], cells[1]
            assert "ERROR" not in result, cells
            number = float(re.match(r"[\d,.]+", result).group().replace(",", ""))  # type: ignore[union-attr]
            assert number > 0, cells
            if key.endswith("-lat"):
                assert result == "100% deliv", cells
                assert float(p50) > 0, cells
    assert "improto row" in proc.stdout and "autobahn-ceiling" in proc.stdout
    text = results.read_text()
    assert "model name" not in text and "CPUs (" in text and "python benchmarks/run.py" in text


def test_ratios_say_better_for_the_right_direction() -> None:
    table = {
        ("fanout-tput", "improto"): {"value": 300.0},
        ("fanout-tput", "seed-003"): {"value": 100.0},
        ("memory", "improto"): {"value": 10.0},
        ("memory", "seed-003"): {"value": 5.0},
    }
    assert peers_report.advantage(table, "improto", "seed-003", "fanout-tput", "value", True) == 3.0
    assert peers_report.advantage(table, "improto", "seed-003", "memory", "value", False) == 0.5
    assert peers_report.advantage(table, "improto", "seed-003", "handshake", "value", True) is None


def test_medians_and_spread_over_runs() -> None:
    got = peers.summarize([
        {"value": 90.0, "p50": 1.0, "flags": []},
        {"value": 100.0, "p50": 3.0, "flags": ["stalled"]},
        {"value": 130.0, "p50": 2.0, "flags": []},
    ])
    assert got["value"] == 100.0 and got["p50"] == 2.0
    assert got["spread"] == pytest.approx(0.2)
    assert got["flags"] == ["stalled"] and got["runs"] == 3
