"""benchmarks/quality.py end to end on a tiny local text with a short budget, and its time-based pieces."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import word_text

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "the old man saw a dark shape move over the hill while the small dog slept by the fire"
WORDS = SENTENCE.split(" ")


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


quality = load_benchmark()


@pytest.fixture
def book(tmp_path: Path) -> Path:
    return word_text(tmp_path / "words.txt", WORDS, 2500)


def test_main_trains_every_family_on_the_same_split_and_writes_finite_rows(
    book: Path, tmp_path: Path
) -> None:
    out = tmp_path / "quality.json"
    rows = quality.main(
        ["--budget-s", "2", "--books", str(book), "--recipes", "sparse_mlp,gpt,gbm", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    assert report["rows"] == rows
    assert report["budget_s"] == 2 and report["books"] == [str(book)]
    assert f"data.books={json.dumps([str(book)])}" in report["overrides"]["all"]
    assert [row["recipe"] for row in rows] == ["sparse_mlp", "gpt", "gbm"]
    assert [row["family"] for row in rows] == ["mlp", "gpt", "gbm"]
    held_out = len(book.read_text()) - round(len(book.read_text()) * 0.9)
    for row in rows:
        for key in ("valid_bpc", "valid_acc", "parameters", "chars_per_s", "train_s", "steps", "scored"):
            assert isinstance(row[key], int | float) and math.isfinite(row[key]), (row["recipe"], key)
        assert 0 < row["valid_bpc"] < 8 and 0 <= row["valid_acc"] <= 1
        assert row["parameters"] > 0 and row["steps"] > 0 and row["chars_per_s"] > 0
        # Every family is scored on the held-out tail: at most its length, minus a window of context.
        assert held_out - row["context"] <= row["scored"] <= held_out


def test_the_time_cosine_runs_from_the_full_rate_to_the_floor() -> None:
    values = [quality.time_cosine(step / 10, 0.1) for step in range(11)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert quality.time_cosine(1.5, 0.1) == pytest.approx(0.1)


def test_books_are_ids_or_paths() -> None:
    assert quality.parse_books("84, 50133") == [84, 50133]
    assert quality.parse_books("84,/tmp/a.txt") == [84, "/tmp/a.txt"]
