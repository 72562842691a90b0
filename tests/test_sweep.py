"""`langinterp sweep`: real nevergrad searches over real (tiny) training runs, resume, and spec errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import word_text

from langinterp import sweep as sweeps
from langinterp.cli import run as cli
from langinterp.interrupts import InterruptAt
from langinterp.recipe import load_recipe
from langinterp.runs import find_run, list_runs
from langinterp.sweep import Sweep, SweepInterrupted, Trial, run_sweep, start_sweep
from langinterp.training import TrainingInterrupted, train

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "birds"]
PARAMS = [
    "optimizer.lr=log:1e-4:1e-1",
    "model.hidden.width=int:4:16",
    "model.hidden.layer=choice:continuous,discontinuous",
]


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A recipe that trains in well under a second: one epoch of 4 steps, then validation."""
    text = word_text(tmp_path / "small.txt", WORDS, 200)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'[data]\nbooks = ["{text.as_posix()}"]\ncontext = 4\nholdout = 0.2\n\n'
        "[model.hidden]\nwidth = 8\n\n"
        "[trainer]\nmax_epochs = 1\nbatch_size = 256\nsamples = 0\n",
        encoding="utf-8",
    )
    return recipe


def _params_flags(params: list[str]) -> list[str]:
    return [flag for spec in params for flag in ("--param", spec)]


def test_sweep_trains_every_trial_and_writes_the_best_recipe(
    tiny_recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "best.toml"
    argv = ["sweep", str(tiny_recipe), "--budget", "3", "--name", "s", "--out", str(out), "trainer.seed=3"]
    assert cli([*argv, *_params_flags(PARAMS)]) == 0
    printed = capsys.readouterr().out
    assert "3 of 3 trials" in printed and "best recipe:" in printed

    state = Sweep.load("s")
    assert [trial.status for trial in state.trials] == ["finished"] * 3
    assert len({json.dumps(trial.values, sort_keys=True) for trial in state.trials}) == 3
    for trial in state.trials:
        run = find_run(trial.run)
        assert trial.score == run.info().best_valid_bpc
        recipe = run.recipe()
        assert recipe.trainer["seed"] == 3  # the fixed override reaches every trial
        for key, value in trial.values.items():
            assert recipe.get(key) == value
    best = min(state.trials, key=lambda trial: trial.score)
    assert state.best() is not None and state.best().number == best.number
    assert f"trial {best.number}, {best.score:.4f} bits/char" in printed

    written = load_recipe(state.best_path)
    assert written.values == find_run(best.run).recipe().values
    for key, value in best.values.items():
        assert written.get(key) == value
    assert out.read_text(encoding="utf-8") == state.best_path.read_text(encoding="utf-8")


def test_an_interrupted_sweep_resumes_where_it_stopped(tiny_recipe: Path) -> None:
    events: list[tuple[int, str]] = []

    def stop_at_second_trial(_sweep: Sweep, trial: Trial) -> None:
        events.append((trial.number, trial.status))
        if trial.number == 2:
            raise KeyboardInterrupt

    state = start_sweep(load_recipe(tiny_recipe), PARAMS, budget=3, name="r")
    with pytest.raises(SweepInterrupted, match="--resume r"):
        run_sweep(state, progress=stop_at_second_trial)
    assert events == [(1, "running"), (1, "finished"), (2, "running")]
    stored = Sweep.load("r")
    assert [trial.status for trial in stored.trials] == ["finished", "interrupted"]
    first = find_run("r-001")
    first_checkpoint = first.checkpoint("last").stat().st_mtime_ns
    second_values = stored.trials[1].values
    assert stored.best_path.is_file()

    # What Ctrl-C inside trial 2's training leaves: its run, stopped at step 2 with a resumable last.ckpt.
    cut = load_recipe(tiny_recipe).with_overrides(stored.trials[1].overrides())
    with pytest.raises(TrainingInterrupted):
        train(cut, run_name="r-002", extra_callbacks=[InterruptAt(2)], quiet=True)
    second_created = find_run("r-002").info().created

    assert cli(["sweep", "--resume", "r"]) == 0
    resumed = Sweep.load("r")
    assert [trial.number for trial in resumed.trials] == [1, 2, 3]
    assert [trial.status for trial in resumed.trials] == ["finished"] * 3
    assert resumed.trials[0] == stored.trials[0]  # not retrained
    assert first.checkpoint("last").stat().st_mtime_ns == first_checkpoint
    assert resumed.trials[1].values == second_values  # the cut-short trial ran with its own values
    second = find_run("r-002").info()
    assert (second.created, second.status, second.steps) == (second_created, "finished", 4)  # resumed
    assert sorted(run.name for run in list_runs()) == ["r-001", "r-002", "r-003"]
    # The optimizer was brought back to where it stood: the same proposals as a sweep never interrupted.
    whole = run_sweep(start_sweep(load_recipe(tiny_recipe), PARAMS, budget=3, name="u"))
    assert [trial.values for trial in whole.trials] == [trial.values for trial in resumed.trials]
    best = resumed.best()
    assert best is not None
    assert load_recipe(resumed.best_path).values == find_run(best.run).recipe().values

    # Re-running with the same name continues (the budget may grow); other settings are refused.
    assert start_sweep(load_recipe(tiny_recipe), PARAMS, budget=4, name="r").trials == resumed.trials
    with pytest.raises(sweeps.UsageError, match="exists with another recipe"):
        start_sweep(load_recipe(tiny_recipe), PARAMS[:2], budget=3, name="r")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failing trial asks for a GPU that is missing")
def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(
    tiny_recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "sweep",
        str(tiny_recipe),
        "--budget",
        "1",
        "--name",
        "f",
        "--param",
        "trainer.accelerator=choice:gpu",
    ]
    assert cli(argv) == 2
    trial = Sweep.load("f").trials[0]
    assert (trial.status, trial.score) == ("failed", None)
    assert "no CUDA device" in (trial.error or "")
    assert "no trial of sweep f finished" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("model.layer_type=choice:continuous,discontinuous", "did you mean model.input.layer, model.hidden"),
        ("optimizer.lrr=log:1e-5:1e-2", "did you mean optimizer.lr"),
        ("optimizer.lr=log:1e-2:1e-5", "LOW must be below HIGH"),
        ("model.hidden.width=int:0:10", "model.hidden.width must be at least 1"),
        ("model.hidden.layer=choice:", "give at least one value"),
        ("model.hidden.layer=choice:continuous,cubic", "must be one of"),
        ("optimizer.lr=log:0:1", "above 0"),
        ("model.hidden.width=int:1.5:3", "must be integers"),
        ("optimizer.lr=uniform:1:2", "expected KEY=log:LOW:HIGH"),
    ],
)
def test_bad_parameter_specs_are_one_line(
    tiny_recipe: Path, spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["sweep", str(tiny_recipe), "--budget", "3", "--param", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert message in " ".join(err.split())
    assert "Traceback" not in err and err.startswith("error: --param")
    assert not (sweeps.sweeps_dir()).exists()


def test_other_bad_requests(tiny_recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sweep", str(tiny_recipe), "--budget", "2", "--param", PARAMS[0]]
    assert cli([*base, "--param", "optimizer.lr=float:0.1:0.2"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert cli([*base, "--optimizer", "OnePlusOn"]) == 2
    assert "did you mean 'OnePlusOne'" in capsys.readouterr().err
    assert cli(["sweep", "--resume", "nothing"]) == 2
    assert "no sweep 'nothing'" in capsys.readouterr().err


def test_a_hand_edited_sweep_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    folder = sweeps.sweeps_dir() / "edited"
    folder.mkdir(parents=True)
    (folder / sweeps.SWEEP_FILE).write_text(json.dumps({"format": sweeps.SWEEP_FORMAT, "name": "edited"}))
    assert cli(["sweep", "--resume", "edited"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a readable" in err


def test_missing_nevergrad_says_how_to_install_it(
    tiny_recipe: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "nevergrad", None)  # `import nevergrad` now raises ImportError
    assert cli(["sweep", str(tiny_recipe), "--budget", "2", "--param", PARAMS[0]]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install nevergrad" in err and "sweep extra" in err
    assert not list_runs()


def test_workers_train_trials_in_parallel_processes(tiny_recipe: Path) -> None:
    state = start_sweep(load_recipe(tiny_recipe), PARAMS[:2], budget=3, name="w")
    run_sweep(state, workers=2)
    stored = Sweep.load("w")
    assert [trial.status for trial in stored.trials] == ["finished"] * 3
    for trial in stored.trials:
        recipe = find_run(trial.run).recipe()
        assert all(recipe.get(key) == value for key, value in trial.values.items())
        assert trial.score == find_run(trial.run).info().best_valid_bpc


def test_a_gbm_recipe_cannot_be_swept(capsys: pytest.CaptureFixture[str]) -> None:
    gbm_recipe = str(Path(__file__).resolve().parent.parent / "recipes" / "gbm.toml")
    assert cli(["sweep", gbm_recipe, "--budget", "2", "--param", "model.rounds=int:2:5"]) == 2
    assert "sweeps train neural models only" in capsys.readouterr().err
