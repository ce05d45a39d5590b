"""The conformance gate must turn bad Autobahn TestSuite reports into a failure.

wstest itself exits 0 whatever happens (even with an empty report when the
server was not listening), so CI relies on conformance/gate.py alone. These
tests write small but real index.json files and run the gate's command line
on them; no wstest, server or network is needed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"conformance_{name}", CONFORMANCE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gate = _load("gate")

# A small real selection: 1.1.* (8 text-message cases) and 12.1.1/12.1.2.
CASES = ["1.1.*", "12.1.1", "12.1.2"]
AGENT = "improto-memory"


def entry(behavior: str = "OK", close: str | None = None, duration: int = 5) -> dict[str, Any]:
    return {
        "behavior": behavior,
        "behaviorClose": close or behavior,
        "duration": duration,
        "remoteCloseCode": 1000,
        "reportfile": "x.json",
    }


def all_ok() -> dict[str, dict[str, Any]]:
    ids = gate.select_cases(gate.read_case_list(gate.CASES_FILE.read_text()), CASES)
    return {cid: entry() for cid in ids}


def write_report(tmp_path: Path, index: Any, name: str = "report") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "index.json").write_text(json.dumps(index) if not isinstance(index, str) else index)
    return folder


def run_gate(*reports: Path, extra: tuple[str, ...] = ()) -> int:
    args = [a for r in reports for a in ("--report", str(r))]
    args += [a for c in CASES for a in ("--cases", c)]
    return gate.main(args + list(extra))


def test_all_ok_non_strict_informational_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = all_ok()
    cases["1.1.2"] = entry("NON-STRICT")
    cases["1.1.3"] = entry("INFORMATIONAL")
    cases["1.1.4"] = entry("OK", close="WRONG CODE")
    assert run_gate(write_report(tmp_path, {AGENT: cases}), extra=("--agent", AGENT)) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out
    assert "NON-STRICT 1" in out and "INFORMATIONAL 1" in out


def test_one_failed_case_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = all_ok()
    cases["1.1.5"] = entry("FAILED", close="OK")
    assert run_gate(write_report(tmp_path, {AGENT: cases})) == 1
    assert "1.1.5: behavior FAILED" in capsys.readouterr().out


def test_failed_behavior_close_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = all_ok()
    cases["1.1.6"] = entry("OK", close="FAILED")
    assert run_gate(write_report(tmp_path, {AGENT: cases})) == 1
    assert "1.1.6: behaviorClose FAILED" in capsys.readouterr().out


def test_unclean_close_fails(tmp_path: Path) -> None:
    cases = all_ok()
    cases["1.1.7"] = entry("OK", close="UNCLEAN")
    assert run_gate(write_report(tmp_path, {AGENT: cases})) == 1


def test_unimplemented_deflate_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = all_ok()
    cases["12.1.2"] = entry("UNIMPLEMENTED", close="OK")
    assert run_gate(write_report(tmp_path, {AGENT: cases})) == 1
    assert (
        "12.1.2: UNIMPLEMENTED (permessage-deflate was not negotiated)" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "index",
    [{}, {AGENT: {}}, "", "not json", [], {AGENT: 5}, {AGENT: {"1.x": entry()}}],
    ids=["no-agent", "no-case", "blank", "garbage", "list", "agent-not-dict", "bad-case-id"],
)
def test_empty_or_broken_report_fails(tmp_path: Path, index: Any) -> None:
    assert run_gate(write_report(tmp_path, index)) == 1


def test_missing_report_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_gate(tmp_path / "never-written") == 1
    assert "cannot read report" in capsys.readouterr().out


def test_fewer_cases_than_expected_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = all_ok()
    del cases["12.1.1"]
    assert run_gate(write_report(tmp_path, {AGENT: cases})) == 1
    assert "9 cases, expected 10; missing 1: 12.1.1" in capsys.readouterr().out


def test_missing_agent_fails(tmp_path: Path) -> None:
    report = write_report(tmp_path, {AGENT: all_ok()})
    assert run_gate(report, extra=("--agent", "improto-redis")) == 1


def test_shards_merge_and_baseline_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One agent split over two shard reports, plus a baseline 3x faster on 9.1.*."""
    nine = {f"9.1.{i}": entry(duration=100 * i) for i in range(1, 7)}
    cases = all_ok() | {cid: entry(duration=e["duration"] * 3) for cid, e in nine.items()}
    ids = sorted(cases)
    shard1 = write_report(tmp_path, {AGENT: {c: cases[c] for c in ids[::2]}}, "shard-1")
    shard2 = write_report(tmp_path, {AGENT: {c: cases[c] for c in ids[1::2]}}, "shard-2")
    baseline = write_report(tmp_path, {"baseline-autobahn": nine}, "baseline")
    status = run_gate(
        shard1,
        shard2,
        baseline,
        extra=(
            "--cases",
            "9.1.*",
            "--baseline-agent",
            "baseline-autobahn",
            "--baseline-cases",
            "9.1.*",
        ),
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "9.* timing" in out and "3.00x" in out


def test_select_cases_follows_wstest_patterns() -> None:
    all_ids = gate.read_case_list(gate.CASES_FILE.read_text())
    assert len(gate.select_cases(all_ids, ["*"])) == 517
    ones = gate.select_cases(all_ids, ["1.*"])
    assert len(ones) == 16 and not any(c.startswith("10.") for c in ones)
    assert gate.select_cases(all_ids, ["12.*", "13.*"], exclude=["13.*"]) == gate.select_cases(
        all_ids, ["12.*"]
    )
    assert gate.select_cases(all_ids, ["9.10.1", "9.2.1"]) == ["9.2.1", "9.10.1"]


def test_evaluate_is_pure_and_counts_groups() -> None:
    verdict = gate.evaluate(
        {AGENT: {"12.1.1": entry(), "1.1.1": entry("FAILED")}}, expected_ids=["1.1.1", "12.1.1"]
    )
    assert not verdict.ok
    assert verdict.problems == [
        f"{AGENT}: 1.1.1: behavior FAILED",
        f"{AGENT}: 1.1.1: behaviorClose FAILED",
    ]
    rows = gate.group_rows(
        gate.parse_index({AGENT: {"12.1.1": entry(duration=7), "1.1.1": entry("FAILED")}})[AGENT]
    )
    assert rows == [(1, 1, 1, 5), (12, 1, 0, 7)]


run = _load("run")


def test_exclude_on_leaves_cases_out_on_one_backend_only() -> None:
    args = run.parse_args(
        ["--backend", "memory", "--backend", "redis", "--exclude-on", "redis=12.*",
         "--exclude-on", "redis=13.*"]
    )
    runner = run.Runner(args)
    cases = gate.select_cases(gate.read_case_list(gate.CASES_FILE.read_text()), ["*"])
    on_memory, on_redis = runner.cases_for("memory", cases), runner.cases_for("redis", cases)
    assert on_memory == cases
    assert not [c for c in on_redis if c.startswith(("12.", "13."))]
    assert set(on_redis) == {c for c in cases if not c.startswith(("12.", "13."))}


def test_exclude_on_needs_a_known_backend(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--exclude-on", "postgres=12.*"])
    assert "--exclude-on wants BACKEND=PATTERN" in capsys.readouterr().err
