"""The rule for what nbval compares (README, "Re-executing and re-saving a chapter").

nbval re-executes every chapter and compares each untagged output with the saved one,
on machines whose CPUs and BLAS kernels differ from the one that saved it. A number at
the level of floating-point rounding (a difference of 6.7e-16, a float32 error of
3.1e-07) changes with the kernel, the thread count and even the memory alignment, so a
compared output must never print one: print a bound instead ("below 1e-12: True"), or
tag the cell ``nbval-ignore-output`` and assert the property.

The scan flags, in every compared output of every saved notebook, a printed number
``0 < |x| < 1e-6`` unless it is a power of ten (``1e-12``, ``1e-07``: a bound or a
parameter, typed by hand, not measured). Below 1e-6 lie the float64 rounding
differences (about 1e-12 and less) and the float32 ones of values near 1. It is a
partial net: a float32 error of larger values, or a training run's accuracy, is not
small, and only re-running the chapters under other BLAS configurations
(tools/portability) catches those.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
ROUNDING_LEVEL = 1e-6

# a decimal or scientific number: 6.7e-16, 3.1E-07, 0.00000031, 2e-9
_NUMBER = re.compile(r"(?<![\w.])[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(?!\w|\.\d)")


def _ignored(cell) -> bool:
    """Whether nbval skips comparing this cell's output: the tags, or the comment markers
    on any line of the source (as nbval 0.11 reads them)."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    markers = {line.strip().lstrip("#").strip() for line in "".join(cell.get("source", "")).splitlines()
               if line.strip().startswith("#")}
    return bool(tags & {"nbval-ignore-output", "nbval-skip"} or markers & {"NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP"})


def _texts(cell):
    """The text nbval compares: streams, text/plain results and error text."""
    for out in cell.get("outputs", []):
        if "text" in out:
            yield "".join(out["text"])
        data = out.get("data", {})
        if "text/plain" in data:
            v = data["text/plain"]
            yield "".join(v) if isinstance(v, list) else v


def rounding_level_numbers(text: str) -> list[str]:
    """Numbers in ``text`` with 0 < |x| < 1e-6 that are not a power of ten."""
    found = []
    for m in _NUMBER.finditer(text):
        value = abs(float(m.group(0)))
        if not 0 < value < ROUNDING_LEVEL:
            continue
        mantissa = m.group(1).replace(".", "").strip("0")
        if m.group(2) and mantissa == "1":       # 1e-12, 1.0e-07: a power of ten, a bound
            continue
        found.append(m.group(0))
    return found


def compared_rounding_outputs(nb: dict) -> list[tuple[int, str]]:
    """(cell index, number) for every rounding-level number in a compared output."""
    return [(i, number) for i, cell in enumerate(nb["cells"])
            if cell["cell_type"] == "code" and not _ignored(cell)
            for text in _texts(cell) for number in rounding_level_numbers(text)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_compared_output_prints_a_rounding_level_number(path):
    found = compared_rounding_outputs(json.loads(path.read_text()))
    assert not found, (f"{path.name}: compared outputs print rounding-level numbers (cell, number): {found}; "
                       "print a bound and assert it, or tag the cell nbval-ignore-output and assert the property")


def test_scan_flags_rounding_numbers_and_passes_bounds():
    assert rounding_level_numbers("largest difference: 6.7e-16") == ["6.7e-16"]
    assert rounding_level_numbers("float32 error 3.1E-07 and 0.00000031") == ["3.1E-07", "0.00000031"]
    assert rounding_level_numbers("below 1e-12: True; h = 1e-07; eps 1e-05; 0.001; 97.52 %; 0.0") == []
    assert rounding_level_numbers("relative error 2e-10") == ["2e-10"]
    assert rounding_level_numbers("max error 6.7e-16.") == ["6.7e-16"]      # at the end of a sentence


def test_scan_flags_a_planted_output_and_honours_the_tag():
    cell = {"cell_type": "code", "metadata": {}, "source": "print(err)",
            "outputs": [{"output_type": "stream", "name": "stdout", "text": ["max error 8.9e-16\n"]}]}
    nb = {"cells": [{"cell_type": "markdown", "source": "8.9e-16"}, cell]}
    assert compared_rounding_outputs(nb) == [(1, "8.9e-16")]
    cell["metadata"]["tags"] = ["nbval-ignore-output"]
    assert compared_rounding_outputs(nb) == []
    cell["metadata"] = {}
    cell["source"] = "# NBVAL_IGNORE_OUTPUT\nprint(err)"
    assert compared_rounding_outputs(nb) == []
    cell["source"] = "err = 2 * err\n# NBVAL_IGNORE_OUTPUT\nprint(err)"     # nbval reads the marker on any line
    assert compared_rounding_outputs(nb) == []
