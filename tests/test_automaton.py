"""The language cellular automaton: exact neighbourhoods, one batched forward per step, repeatable runs."""

import json
from pathlib import Path

import pytest
import torch

from langinterp.automaton import neighbourhoods, run_automaton
from langinterp.cli import run
from langinterp.errors import UsageError
from langinterp.recipe import load_recipe
from langinterp.sampling import SamplingOptions
from langinterp.text import decode, encode

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TEXT = "the cat sat on the mat. the dog sat on the log. " * 20


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding a tiny centered MLP, trained for real for a few steps (once for the module)."""
    from langinterp.training import train

    folder = tmp_path_factory.mktemp("automaton")
    book = folder / "book.txt"
    book.write_text(TEXT, encoding="utf-8")
    recipe = load_recipe(
        RECIPES / "centered.toml",
        [
            f'data.books=["{book}"]',
            "data.context=5",
            "model.hidden.width=16",
            "trainer.max_epochs=2",
            "trainer.batch_size=64",
            "trainer.samples=0",
        ],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LANGINTERP_HOME", str(folder / "home"))
        train(recipe, run_name="centered-tiny", quiet=True)
    return folder / "home"


@pytest.fixture
def centered_run(trained_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the trained cache this test's LANGINTERP_HOME."""
    monkeypatch.setenv("LANGINTERP_HOME", str(trained_home))


def test_neighbourhoods_are_the_characters_around_each_position() -> None:
    codes = encode("abcdef").long()
    windows = neighbourhoods(codes, 5)
    assert windows.shape == (6, 4)
    assert decode(windows[0]) == "  bc"
    assert decode(windows[2]) == "abde"
    assert decode(windows[5]) == "de  "


class CountingModel(torch.nn.Module):
    """A centered reader that predicts the left neighbour and counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        left = codes[:, codes.shape[1] // 2 - 1]
        return torch.nn.functional.one_hot(left, 128).float() * 10


def test_one_batched_forward_per_step_shifts_text() -> None:
    model = CountingModel()
    lines = list(run_automaton(model, "abc", 3, SamplingOptions(greedy=True), context=5))
    assert lines == ["abc", " ab", "  a", "   "]
    assert model.calls == 3


def test_empty_text_and_negative_steps_are_refused() -> None:
    with pytest.raises(UsageError, match="the text is empty"):
        list(run_automaton(CountingModel(), "", 2, SamplingOptions(), context=5))
    with pytest.raises(UsageError, match="--reapply must be at least 0"):
        list(run_automaton(CountingModel(), "a", -1, SamplingOptions(), context=5))


def test_cli_prints_reapply_plus_one_lines_and_is_repeatable(
    centered_run: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["automaton", "--text", "the cat sat", "--reapply", "4", "--seed", "3", "--json"]
    assert run(args) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in first] == [0, 1, 2, 3, 4]
    assert first[0]["text"] == "the cat sat"
    assert all(len(line["text"]) == len("the cat sat") for line in first)
    assert run(args) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first


def test_cli_default_text_and_aligned_lines(centered_run: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["automaton", "--reapply", "10", "--top-k", "2", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11
    assert lines[0].endswith("The monster awakes")
    assert len({line.index("│") for line in lines}) == 1


def test_cli_refuses_a_sequence_run(
    tmp_path: Path, centered_run: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from langinterp.training import train

    book = tmp_path / "b.txt"
    book.write_text(TEXT, encoding="utf-8")
    recipe = load_recipe(
        RECIPES / "sparse_mlp.toml",
        [
            f'data.books=["{book}"]',
            "data.context=4",
            "model.hidden.width=8",
            "trainer.max_steps=2",
            "trainer.samples=0",
        ],
    )
    sequence_run = train(recipe, run_name="sequence-tiny", quiet=True)
    assert run(["automaton", "--run", str(sequence_run.path)]) == 2
    err = capsys.readouterr().err
    assert "needs a centered model" in err and len(err.strip().splitlines()) == 1


def test_cli_empty_text_is_one_line(centered_run: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["automaton", "--text", ""]) == 2
    assert "the text is empty" in capsys.readouterr().err


class UniformModel(torch.nn.Module):
    """A centered reader with no preference: every character equally likely at every position."""

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.zeros(codes.shape[0], 128)


def test_unseeded_runs_differ_and_the_model_keeps_its_mode() -> None:
    model = UniformModel().train()
    first, second = (list(run_automaton(model, "x" * 64, 2, SamplingOptions(), context=5)) for _ in range(2))
    assert first[1:] != second[1:]
    assert model.training
    seeded = [list(run_automaton(model, "x" * 64, 2, SamplingOptions(), context=5, seed=7)) for _ in range(2)]
    assert seeded[0] == seeded[1]
