"""``improto.gctuning``: run in a fresh interpreter, so pytest's own collector is untouched."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import gc, sys; from improto.gctuning import tune; before = gc.get_threshold(); "
    "tune(int(sys.argv[1])); print(before[0], *gc.get_threshold(), gc.get_freeze_count())"
)


def probe(threshold: int) -> list[int]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)], capture_output=True, text=True, check=True)
    return [int(word) for word in result.stdout.split()]


def test_tune_raises_the_first_threshold_and_freezes_start_up_objects() -> None:
    default, first, older, oldest, frozen = probe(20_000)
    assert default == 700
    assert first == 20_000
    assert (older, oldest) == (10, 10)  # the older generations keep Python's settings
    assert frozen > 1_000  # at least the modules improto and Twisted imported


def test_zero_leaves_pythons_settings() -> None:
    assert probe(0) == [700, 700, 10, 10, 0]
