"""Pass/fail gate over Autobahn TestSuite (wstest fuzzingclient) reports.

wstest itself always exits 0: when the server was not listening it writes an
empty report, and a crashed or timed-out case is just a red cell in an HTML
page. This gate turns a report into a CI verdict and a readable summary.

It fails when
  * a report folder or its index.json is missing, or holds no agent / no case;
  * an expected case id is missing (fewer cases than the selection asked for);
  * any case has behavior FAILED (or any verdict the suite's own report draws
    as "Fail"), or behaviorClose FAILED / UNCLEAN;
  * any permessage-deflate case (12.*, 13.*) is UNIMPLEMENTED, i.e. the
    server did not negotiate compression.
OK, NON-STRICT and INFORMATIONAL pass, as do the close verdicts WRONG CODE and
FAILED BY CLIENT (drawn orange, not red, by the suite).

The core functions are pure (data in, data out) so tests can feed them
dictionaries; only `load_index` and `main` touch files.

Usage:
  python conformance/gate.py --report DIR [--report DIR ...]
      [--cases '*'] [--exclude PATTERN] [--agent NAME ...]
      [--baseline-agent NAME --baseline-cases '9.*']
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES_FILE = HERE / "wstest-cases.txt"

PASS_BEHAVIORS = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
PASS_CLOSE_BEHAVIORS = frozenset(
    {"OK", "NON-STRICT", "INFORMATIONAL", "WRONG CODE", "FAILED BY CLIENT"}
)
DEFLATE_GROUPS = frozenset({12, 13})
UNIMPLEMENTED = "UNIMPLEMENTED"


@dataclass(frozen=True)
class CaseResult:
    """One case of one agent, as recorded in index.json."""

    case_id: str
    behavior: str
    behavior_close: str
    duration_ms: int
    remote_close_code: int | None = None


@dataclass
class Verdict:
    """What the gate decided, plus the text it prints."""

    problems: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


# --- case ids and selection -------------------------------------------------


def case_key(case_id: str) -> tuple[int, ...]:
    """'9.10.2' -> (9, 10, 2): numeric order, as the suite sorts."""
    return tuple(int(part) for part in case_id.split("."))


def case_group(case_id: str) -> int:
    return int(case_id.split(".", 1)[0])


def read_case_list(text: str) -> list[str]:
    """Case ids from wstest-cases.txt content (comments and blanks skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def select_cases(
    all_ids: Iterable[str], patterns: Iterable[str], exclude: Iterable[str] = ()
) -> list[str]:
    """The case ids wstest runs for a spec's "cases"/"exclude-cases".

    Mirrors autobahntestsuite.caseset.resolveCasePatternList: a pattern with
    '*' becomes a regex ('.' literal, '*' any) matched at the start of the id
    (so '1.*' does not match '10.1.1'); a pattern without '*' is taken as-is.
    """
    all_ids = list(all_ids)

    def resolve(pats: Iterable[str]) -> set[str]:
        chosen: set[str] = set()
        for pat in pats:
            if "*" in pat:
                rx = re.compile(pat.replace(".", r"\.").replace("*", ".*"))
                chosen.update(cid for cid in all_ids if rx.match(cid))
            else:
                chosen.add(pat)
        return chosen

    return sorted(resolve(patterns) - resolve(exclude), key=case_key)


# --- parsing ------------------------------------------------------------------


def parse_index(
    data: Mapping[str, Mapping[str, Mapping[str, object]]],
) -> dict[str, dict[str, CaseResult]]:
    """index.json ({agent: {case_id: {...}}}) -> typed results per agent."""
    parsed: dict[str, dict[str, CaseResult]] = {}
    for agent, cases in data.items():
        parsed[agent] = {
            case_id: CaseResult(
                case_id=case_id,
                behavior=str(entry.get("behavior", "")),
                behavior_close=str(entry.get("behaviorClose", "")),
                duration_ms=int(entry.get("duration", 0) or 0),  # type: ignore[call-overload]
                remote_close_code=entry.get("remoteCloseCode"),  # type: ignore[arg-type]
            )
            for case_id, entry in cases.items()
        }
    return parsed


def merge_indexes(
    indexes: Iterable[Mapping[str, Mapping[str, Mapping[str, object]]]],
) -> dict[str, dict[str, Mapping[str, object]]]:
    """Union of several index.json contents; one agent may be split over shards."""
    merged: dict[str, dict[str, Mapping[str, object]]] = {}
    for index in indexes:
        for agent, cases in index.items():
            merged.setdefault(agent, {}).update(cases)
    return merged


# --- checks -------------------------------------------------------------------


def case_problems(result: CaseResult) -> list[str]:
    """Why one case fails the gate (empty list: it passes)."""
    problems = []
    behavior = result.behavior
    if behavior == UNIMPLEMENTED:
        if case_group(result.case_id) in DEFLATE_GROUPS:
            problems.append(
                f"{result.case_id}: UNIMPLEMENTED (permessage-deflate was not negotiated)"
            )
    elif behavior not in PASS_BEHAVIORS:
        problems.append(f"{result.case_id}: behavior {behavior or '(none)'}")
    if result.behavior_close not in PASS_CLOSE_BEHAVIORS:
        problems.append(f"{result.case_id}: behaviorClose {result.behavior_close or '(none)'}")
    return problems


def agent_problems(
    agent: str, results: Mapping[str, CaseResult], expected_ids: Sequence[str]
) -> list[str]:
    """All reasons one agent's results fail the gate."""
    if not results:
        return [f"{agent}: report holds no case at all (was the server listening?)"]
    problems = [
        f"{agent}: {p}"
        for r in sorted(results.values(), key=lambda r: case_key(r.case_id))
        for p in case_problems(r)
    ]
    missing = [cid for cid in expected_ids if cid not in results]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        problems.append(
            f"{agent}: {len(results)} cases, expected {len(expected_ids)}; missing {len(missing)}: {shown}"
        )
    return problems


# --- summaries ----------------------------------------------------------------


def behavior_counts(results: Mapping[str, CaseResult]) -> tuple[Counter[str], Counter[str]]:
    return Counter(r.behavior for r in results.values()), Counter(
        r.behavior_close for r in results.values()
    )


def group_rows(results: Mapping[str, CaseResult]) -> list[tuple[int, int, int, int]]:
    """(group, cases, failing cases, total ms) per case group, in order."""
    cases: Counter[int] = Counter()
    failing: Counter[int] = Counter()
    millis: Counter[int] = Counter()
    for r in results.values():
        g = case_group(r.case_id)
        cases[g] += 1
        millis[g] += r.duration_ms
        failing[g] += bool(case_problems(r))
    return [(g, cases[g], failing[g], millis[g]) for g in sorted(cases)]


def slowest(results: Mapping[str, CaseResult], n: int = 10) -> list[CaseResult]:
    return sorted(results.values(), key=lambda r: (-r.duration_ms, case_key(r.case_id)))[:n]


def ratio(value: int, reference: int) -> float | None:
    return value / reference if reference > 0 else None


def timing_rows(
    subjects: Mapping[str, Mapping[str, CaseResult]],
    baseline: Mapping[str, CaseResult],
    prefix: str = "9.",
) -> list[tuple[str, int, list[tuple[int | None, float | None]]]]:
    """Per case under `prefix` that the baseline ran: (case, baseline ms,
    [(subject ms, subject/baseline) per subject agent])."""
    rows = []
    for cid in sorted((c for c in baseline if c.startswith(prefix)), key=case_key):
        base_ms = baseline[cid].duration_ms
        cells: list[tuple[int | None, float | None]] = []
        for results in subjects.values():
            r = results.get(cid)
            cells.append(
                (None, None) if r is None else (r.duration_ms, ratio(r.duration_ms, base_ms))
            )
        rows.append((cid, base_ms, cells))
    return rows


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_agent_summary(agent: str, results: Mapping[str, CaseResult]) -> list[str]:
    behaviors, closes = behavior_counts(results)
    lines = [f"== {agent}: {len(results)} cases"]
    lines.append("  behavior:      " + ", ".join(f"{k} {v}" for k, v in sorted(behaviors.items())))
    lines.append("  behaviorClose: " + ", ".join(f"{k} {v}" for k, v in sorted(closes.items())))
    lines.append(f"  {'group':>5} {'cases':>6} {'failing':>8} {'seconds':>9}")
    for g, n, bad, ms in group_rows(results):
        lines.append(f"  {g:>5} {n:>6} {bad:>8} {ms / 1000:>9.1f}")
    lines.append("  slowest cases:")
    for r in slowest(results):
        lines.append(f"    {r.case_id:<9} {r.duration_ms:>7} ms  {r.behavior}/{r.behavior_close}")
    return lines


def format_timing_table(
    subjects: Mapping[str, Mapping[str, CaseResult]],
    baseline_agent: str,
    baseline: Mapping[str, CaseResult],
) -> list[str]:
    rows = timing_rows(subjects, baseline)
    if not rows:
        return []
    names = list(subjects)
    header = f"  {'case':<8} {baseline_agent[:12]:>12}" + "".join(
        f" {n[:16]:>16} {'ratio':>7}" for n in names
    )
    lines = [f"== 9.* timing (ms) vs baseline agent {baseline_agent}", header]
    totals = [0] * len(names)
    base_total = 0
    for cid, base_ms, cells in rows:
        base_total += base_ms
        text = f"  {cid:<8} {base_ms:>12}"
        for i, (ms, rat) in enumerate(cells):
            totals[i] += ms or 0
            text += f" {'-' if ms is None else ms:>16} {_fmt_ratio(rat):>7}"
        lines.append(text)
    lines.append(
        f"  {'total':<8} {base_total:>12}"
        + "".join(f" {t:>16} {_fmt_ratio(ratio(t, base_total)):>7}" for t in totals)
    )
    return lines


# --- the gate -------------------------------------------------------------------


def evaluate(
    index: Mapping[str, Mapping[str, Mapping[str, object]]],
    expected_ids: Sequence[str],
    agents: Sequence[str] = (),
    baseline_agent: str | None = None,
    baseline_expected_ids: Sequence[str] = (),
    load_errors: Sequence[str] = (),
) -> Verdict:
    """Judge a (merged) index.json.

    Every agent except the baseline must have all of `expected_ids` and no
    failing case; the baseline must have `baseline_expected_ids`. `agents`
    names agents that must be present (a crashed run leaves none).
    `load_errors` are reports that could not be read; each fails the gate.
    """
    verdict = Verdict(problems=list(load_errors))
    results = parse_index(index)
    if not results:
        verdict.problems.append(
            "report is empty: no agent ran any case (was the server listening?)"
        )
    for name in agents:
        if name not in results:
            verdict.problems.append(f"{name}: agent missing from the report")
    if baseline_agent is not None and baseline_agent not in results:
        verdict.problems.append(f"{baseline_agent}: baseline agent missing from the report")

    subjects = {a: r for a, r in sorted(results.items()) if a != baseline_agent}
    lines: list[str] = []
    for agent, agent_results in subjects.items():
        verdict.problems += agent_problems(agent, agent_results, expected_ids)
        lines += format_agent_summary(agent, agent_results)
    if baseline_agent is not None and baseline_agent in results:
        base = results[baseline_agent]
        verdict.problems += agent_problems(baseline_agent, base, baseline_expected_ids)
        lines += format_agent_summary(baseline_agent, base)
        lines += format_timing_table(subjects, baseline_agent, base)

    lines.append(
        "== verdict: " + ("PASS" if verdict.ok else f"FAIL ({len(verdict.problems)} problems)")
    )
    lines += [f"  - {p}" for p in verdict.problems[:50]]
    if len(verdict.problems) > 50:
        lines.append(f"  ... {len(verdict.problems) - 50} more")
    verdict.text = "\n".join(lines)
    return verdict


# --- I/O and command line -------------------------------------------------------


def load_index(path: Path) -> tuple[dict[str, dict[str, Mapping[str, object]]] | None, str | None]:
    """Read DIR/index.json (or the file itself). Returns (data, error)."""
    file = path / "index.json" if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        return None, f"{file}: cannot read report ({exc.strerror})"
    if not text.strip():
        return None, f"{file}: report file is empty"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"{file}: not JSON ({exc})"
    shape_error = index_shape_error(data)
    if shape_error:
        return None, f"{file}: {shape_error}"
    return data, None


CASE_ID = re.compile(r"^\d+(\.\d+)*$")


def index_shape_error(data: object) -> str | None:
    """Why `data` is not an index.json ({agent: {case_id: {...}}}), or None."""
    if not isinstance(data, dict):
        return "not an {agent: {case: ...}} object"
    for agent, cases in data.items():
        if not isinstance(cases, dict):
            return f"agent {agent!r} does not map case ids to results"
        for case_id, entry in cases.items():
            if not CASE_ID.match(case_id) or not isinstance(entry, dict):
                return f"agent {agent!r}: bad case entry {case_id!r}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail CI on a bad Autobahn TestSuite report.")
    parser.add_argument(
        "--report",
        action="append",
        type=Path,
        required=True,
        help="report folder (with index.json) or index.json; repeat to merge shards/agents",
    )
    parser.add_argument(
        "--cases", action="append", help="case patterns that were run (default: '*')"
    )
    parser.add_argument("--exclude", action="append", default=[], help="excluded case patterns")
    parser.add_argument(
        "--agent", action="append", default=[], help="agent that must be in the report"
    )
    parser.add_argument(
        "--baseline-agent", help="reference agent (e.g. the stock Autobahn echo server)"
    )
    parser.add_argument(
        "--baseline-cases", action="append", help="case patterns the baseline ran (default: '9.*')"
    )
    args = parser.parse_args(argv)

    all_ids = read_case_list(CASES_FILE.read_text(encoding="utf-8"))
    indexes: list[dict[str, dict[str, Mapping[str, object]]]] = []
    load_errors: list[str] = []
    for path in args.report:
        data, error = load_index(path)
        if data is None:
            load_errors.append(error or f"{path}: unreadable")
        else:
            indexes.append(data)
    verdict = evaluate(
        merge_indexes(indexes),
        expected_ids=select_cases(all_ids, args.cases or ["*"], args.exclude),
        agents=args.agent,
        baseline_agent=args.baseline_agent,
        baseline_expected_ids=select_cases(all_ids, args.baseline_cases or ["9.*"]),
        load_errors=load_errors,
    )
    print(verdict.text)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
