"""Sequence families (transformer, Mamba, GPT) through training: Ctrl-C and resume, sampling options.

The MLP's guarantees (tests/test_training.py, tests/test_cli_generate.py) hold for the families that read
`causal` windows and predict at every position (DDP for both kinds: tests/test_ddp.py). Tiny widths, a few
steps, CPU only.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
from conftest import assert_same_training_state, checkpoint_payload

from langinterp.cli import run as cli
from langinterp.data import WindowDataset, build_splits
from langinterp.inference import load_for_inference
from langinterp.interrupts import InterruptAt
from langinterp.models import build_model
from langinterp.recipe import Recipe, load_recipe
from langinterp.runs import find_run, list_runs, load_checkpoint
from langinterp.sampling import SamplingOptions, generate
from langinterp.training import TrainingInterrupted, train

RECIPES = Path(__file__).parent.parent / "recipes"
TINY = {
    "transformer": [
        "model.d_model=8",
        "model.heads=2",
        "model.layers=1",
        "model.feedforward=16",
        "data.context=8",
    ],
    "mamba": ["model.d_model=8", "model.layers=2", "model.d_state=4", "data.context=12"],
    "gpt": ["model.d_model=8", "model.heads=2", "model.layers=1", "data.context=8"],
}
TEXT = "the dunwich horror came over the hills and the whippoorwills sang. "


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "book.txt"
    path.write_text(TEXT * 20, encoding="utf-8")  # 1360 characters: 19 batches of 64 windows (holdout 0.1)
    return path


def tiny(family: str, text: Path, *overrides: str) -> Recipe:
    plain = [
        f"data.books=['{text}']",
        "trainer.max_epochs=2",
        "trainer.batch_size=64",
        "trainer.samples=0",
        "trainer.accelerator='cpu'",
    ]
    return load_recipe(RECIPES / f"{family}.toml", [*TINY[family], *plain, *overrides])


def batches_per_epoch(recipe: Recipe) -> int:
    windows = WindowDataset(build_splits(recipe.data).train, recipe.data["context"], "causal")
    return math.ceil(len(windows) / recipe.trainer["batch_size"])


class FirstStep(pl.Callback):
    """Records the global step at which this process trained its first batch."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.step is None:
            self.step = trainer.global_step


# --- Ctrl-C and resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["transformer", "mamba", "gpt"])
def test_ctrl_c_mid_epoch_then_resume_finishes_and_its_checkpoints_generate(family: str, book: Path) -> None:
    recipe = tiny(family, book)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="--resume stopped"):
        train(recipe, run_name="stopped", extra_callbacks=[InterruptAt(3)], quiet=True)
    assert signal.getsignal(signal.SIGINT) == handler
    stopped = find_run("stopped")
    assert stopped.info().status == "interrupted"
    assert stopped.info().steps == 3
    cut = load_checkpoint(stopped.checkpoint("last"))
    assert cut.global_step == 3
    assert cut.recipe.values == recipe.values

    first = FirstStep()
    resumed = train(None, resume="stopped", extra_callbacks=[first], quiet=True)
    assert resumed.path == stopped.path and [run.name for run in list_runs()] == ["stopped"]
    assert first.step == 3  # the step count continues from the interrupted one, it does not restart at 0
    info = resumed.info()
    assert (info.status, info.epochs) == ("finished", 2)
    assert info.steps == 2 * batches_per_epoch(recipe)  # as many as an uninterrupted run, not 3 more
    assert info.best_valid_bpc is not None and 0 < info.best_valid_bpc < 7

    for which in ("best", "last"):
        payload = checkpoint_payload(resumed.checkpoint(which))  # weights_only=True: plain data only
        assert payload["hyper_parameters"]["recipe"] == recipe.values
        loaded = load_checkpoint(resumed.checkpoint(which))
        model = build_model(loaded.recipe)
        model.load_state_dict(loaded.state_dict)
        assert model.reads == "sequence"
    assert load_checkpoint(resumed.checkpoint("last")).global_step == info.steps

    ready = load_for_inference("stopped", "last")
    text = "".join(generate(ready.model, "the hills", 30, SamplingOptions(), seed=0))
    assert len(text) == 30 and all(0 <= ord(c) < 128 for c in text)


@pytest.mark.parametrize("family", ["transformer", "mamba", "gpt"])
def test_runs_repeat_and_resume_anywhere_continues_exactly(family: str, book: Path) -> None:
    recipe = tiny(family, book, *(["model.dropout=0.2"] if family == "gpt" else []))
    whole = train(recipe, run_name="whole", quiet=True)
    again = train(recipe, run_name="again", quiet=True)
    assert_same_training_state(whole.checkpoint("last"), again.checkpoint("last"))

    # Ctrl-C in the middle of the first epoch, as the second is about to start, and in the middle of the
    # second, then resume with the recipe unchanged: the same training as without the interruption (gpt
    # runs with dropout here, so this also shows that its random draws continue as they would have).
    boundary = batches_per_epoch(recipe)
    for stop in (3, boundary, boundary + 5):
        name = f"cut{stop}"
        with pytest.raises(TrainingInterrupted):
            train(recipe, run_name=name, extra_callbacks=[InterruptAt(stop)], quiet=True)
        assert checkpoint_payload(find_run(name).checkpoint("last"))["global_step"] == stop
        cut = train(None, resume=name, quiet=True)
        assert_same_training_state(whole.checkpoint("last"), cut.checkpoint("last"))

    if recipe.scheduler["name"] == "cosine":
        return  # its schedule spans max_epochs: a 1-epoch run is annealed differently from a 2-epoch one
    # As for the MLP: one epoch, then `--resume` through the CLI raising max_epochs to two.
    first = train(tiny(family, book, "trainer.max_epochs=1"), run_name="halves", quiet=True)
    assert checkpoint_payload(first.checkpoint("last"))["epoch"] == 0
    assert cli(["train", "--resume", "trainer.max_epochs=2", "--quiet"]) == 0
    assert (first.info().status, first.info().epochs) == ("finished", 2)
    assert_same_training_state(whole.checkpoint("last"), first.checkpoint("last"))


# --- sampling options with a trained Mamba --------------------------------------------------------------


@pytest.fixture(scope="module")
def mamba_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Mamba trained for two epochs on TEXT: its run directory."""
    home = tmp_path_factory.mktemp("mamba-home")
    path = home / "book.txt"
    path.write_text(TEXT * 20, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LANGINTERP_HOME", str(home))
        recipe = tiny("mamba", path, "optimizer.lr=1e-2")
        return train(recipe, run_name="mamba", quiet=True).path


def _generate(capsys: pytest.CaptureFixture[str], run: Path, *args: str) -> str:
    capsys.readouterr()
    assert cli(["generate", "--run", str(run), "-p", "the hills", "-n", "60", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "options",
    [
        ["--temperature", "1.5"],
        ["--top-k", "5"],
        ["--top-p", "0.9"],
        ["-t", "2.0", "--top-k", "20", "--top-p", "0.95"],
    ],
    ids=["temperature", "top-k", "top-p", "all"],
)
def test_a_seed_repeats_mamba_samples_for_every_sampling_option(
    options: list[str], mamba_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _generate(capsys, mamba_run, *options, "--seed", "5")
    again = _generate(capsys, mamba_run, *options, "--seed", "5")
    other = _generate(capsys, mamba_run, *options, "--seed", "6")
    assert first == again
    assert first != other
    assert first.startswith("the hills") and len(first) == len("the hills") + 60 + 1
    # Two samples in one call: the second is seed 6's own sample, so no recurrent state leaks between them.
    both = _generate(capsys, mamba_run, *options, "--seed", "5", "--num-samples", "2")
    assert both.startswith(first) and both.endswith(other)


def test_mamba_generates_through_its_recurrent_state_as_the_full_forward_would(
    mamba_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompt and continuation fit the context, so recomputing over the whole text is the reference."""
    model = load_for_inference(str(mamba_run), "last").model.double()
    assert model.can_step
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    sampled = SamplingOptions(temperature=1.5)
    greedy = SamplingOptions(greedy=True)
    stepped = [
        "".join(generate(model, prompt, 5, options, seed=3))
        for prompt in ("the h", "whipp")
        for options in (greedy, sampled)
    ]
    assert calls == []  # the prompt went in through `step`, not through the parallel form
    assert stepped[0] != stepped[2]  # the greedy continuation depends on the prompt read into the state

    monkeypatch.setattr(type(model), "can_step", property(lambda self: False))
    recomputed = [
        "".join(generate(model, prompt, 5, options, seed=3))
        for prompt in ("the h", "whipp")
        for options in (greedy, sampled)
    ]
    assert calls  # this time the parallel form was used
    assert stepped == recomputed
