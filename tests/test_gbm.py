"""LightGBM next-character models: real boosters trained for a few rounds on a small text written here."""

import math
import random
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import torch

from langinterp.cli import run as cli
from langinterp.data import build_splits
from langinterp.errors import NotFoundError, UsageError
from langinterp.evaluation import evaluate_model
from langinterp.gbm_training import train_gbm
from langinterp.inference import load_for_inference
from langinterp.models.gbm import UNSEEN_FLOOR, GbmModel, held_out_bits, load_gbm_model
from langinterp.recipe import load_recipe
from langinterp.runs import find_run, list_runs
from langinterp.sampling import SamplingOptions, generate

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "gbm.toml"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "saw", "one", "dog", "run", "to", "its", "old", "red"]
SMALL = [
    "data.context=8",
    "model.rounds=3",
    "model.num_leaves=4",
    "model.min_data_in_leaf=5",
    "model.threads=1",
]


def write_text(path: Path, seed: int = 0, words: int = 800) -> Path:
    """About 3,000 characters of lowercase words, spaces, full stops and newlines: no capitals, no digits."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) + "." for _ in range(words // 8)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small_recipe(tmp_path: Path, *extra: str):
    book = write_text(tmp_path / "book.txt")
    return load_recipe(RECIPE, [f'data.books=["{book}"]', "data.holdout=0.2", *SMALL, *extra])


def test_training_writes_a_run_that_scores_like_every_other_model(tmp_path: Path) -> None:
    recipe = small_recipe(tmp_path)
    rounds: list[tuple[int, int, dict[str, float]]] = []
    run = train_gbm(recipe, run_name="tiny", progress=lambda done, total, m: rounds.append((done, total, m)))

    assert run.booster_path.is_file() and run.recipe_path.is_file()
    assert load_recipe(run.recipe_path).values == recipe.values
    info = run.info()
    assert (info.model_type, info.status, info.epochs) == ("gbm", "finished", 3)
    assert [(done, total) for done, total, _ in rounds] == [(1, 3), (2, 3), (3, 3)]
    assert rounds[-1][2]["valid_bpc"] < rounds[0][2]["valid_bpc"]
    assert [r.name for r in list_runs()] == ["tiny"]

    model = load_gbm_model(find_run("tiny"))
    scores = evaluate_model(model, build_splits(recipe.data).valid, "sequence")
    assert math.isfinite(scores.bits_per_char) and 0 < scores.bits_per_char < math.log2(128)
    assert info.best_valid_bpc == pytest.approx(scores.bits_per_char, rel=1e-5)


def test_unseen_characters_are_never_predicted_and_sampling_repeats(tmp_path: Path) -> None:
    train_gbm(small_recipe(tmp_path), run_name="tiny")
    loaded = load_for_inference(run="tiny")  # what `langinterp generate/evaluate --run tiny` load
    model = loaded.model
    assert isinstance(model, GbmModel) and loaded.data_kind == "sequence"
    seen = set(model.classes.tolist())
    assert seen == {ord(c) for c in "".join(WORDS) + " .\n"}

    windows = torch.randint(0, 128, (16, 8))
    log_probs = model(windows)
    assert log_probs.shape == (16, 128)
    unseen = [code for code in range(128) if code not in seen]
    assert torch.isneginf(log_probs[:, unseen]).all()
    probabilities = torch.exp(log_probs).double()
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(16, dtype=torch.float64), atol=1e-5)
    # The booster's probabilities as they come, not softmaxed again.
    direct = model.booster.predict(windows.numpy().astype(np.float64))
    assert np.allclose(probabilities[:, model.classes].numpy(), direct, atol=1e-6)

    hot = SamplingOptions(temperature=5.0)  # flattens the distribution: unseen codes would show up if allowed
    first = "".join(generate(model, "the cat ", 300, hot, seed=7))
    again = "".join(generate(model, "the cat ", 300, hot, seed=7))
    assert first == again and len(first) == 300
    assert set(first) <= {chr(code) for code in seen}
    assert "".join(generate(model, "the cat ", 300, hot, seed=8)) != first


def test_same_seed_same_booster(tmp_path: Path) -> None:
    recipe = small_recipe(tmp_path)
    one, two = train_gbm(recipe, run_name="one"), train_gbm(recipe, run_name="two")
    assert one.booster_path.read_text() == two.booster_path.read_text()


def test_early_stopping_keeps_the_best_round(tmp_path: Path) -> None:
    # A huge learning rate overshoots after the first rounds, so the held-out loss stops improving early.
    recipe = small_recipe(tmp_path, "model.rounds=30", "model.learning_rate=8.0", "model.early_stopping=2")
    run = train_gbm(recipe, run_name="early")
    kept = run.info().epochs
    assert 1 <= kept < 30
    booster = lgb.Booster(model_file=str(run.booster_path))
    assert booster.current_iteration() == kept
    assert run.info().best_valid_bpc == pytest.approx(
        evaluate_model(load_gbm_model(run), build_splits(recipe.data).valid, "sequence").bits_per_char,
        rel=1e-5,
    )


def test_held_out_character_never_seen_costs_the_floor(tmp_path: Path) -> None:
    book = write_text(tmp_path / "book.txt")
    valid = tmp_path / "valid.txt"
    valid.write_text(
        write_text(tmp_path / "v.txt", seed=1, words=80).read_text() + "THE END.\n", encoding="utf-8"
    )
    recipe = load_recipe(RECIPE, [f'data.books=["{book}"]', f'data.valid_books=["{valid}"]', *SMALL])
    run = train_gbm(recipe, run_name="unseen")
    info = run.info()
    assert info.extra["valid_unseen"] == 6  # T, H, E, E, N, D
    assert math.isfinite(info.best_valid_bpc)

    model = load_gbm_model(run)
    codes = torch.tensor([ord(c) for c in "the cat sat ZZ"], dtype=torch.uint8).numpy()
    windows = np.lib.stride_tricks.sliding_window_view(codes, 9)
    classes = model.classes.tolist()
    bits = held_out_bits(model.booster, classes, windows[:, :8], windows[:, 8])
    seen_bits = held_out_bits(model.booster, classes, windows[:4, :8], windows[:4, 8])
    # The last two targets are "Z", never seen: each is charged exactly -log2(UNSEEN_FLOOR) bits.
    assert bits == pytest.approx((4 * seen_bits + 2 * -math.log2(UNSEEN_FLOOR)) / 6)


def test_broken_run_files_are_one_clear_error(tmp_path: Path) -> None:
    run = train_gbm(small_recipe(tmp_path), run_name="tiny")
    run.booster_path.write_text("not a booster\n")
    with pytest.raises(UsageError, match="not a readable LightGBM model"):
        load_gbm_model(run)
    (run.path / "gbm.json").unlink()
    with pytest.raises(NotFoundError, match="gbm.json"):
        load_gbm_model(run)


def test_model_rejects_windows_of_the_wrong_width() -> None:
    booster = lgb.train(
        {"objective": "multiclass", "num_class": 2, "verbosity": -1, "min_data_in_leaf": 1},
        lgb.Dataset(np.array([[97.0], [98.0]] * 4), label=np.array([0, 1] * 4)),
        num_boost_round=1,
    )
    model = GbmModel(booster, [97, 98], context=1)
    with pytest.raises(ValueError, match=r"\[B, 1\]"):
        model(torch.zeros(2, 3, dtype=torch.int64))


def test_cli_trains_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    book = write_text(tmp_path / "book.txt")
    code = cli(
        ["gbm", str(RECIPE), f'data.books=["{book}"]', "data.holdout=0.2", *SMALL, "--run-name", "cli"]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "run cli: 3 rounds kept" in out and "bits/char held out" in out
    assert find_run("cli").booster_path.is_file()

    sample = ["generate", "--run", "cli", "--prompt", "the dog ", "-n", "80", "--seed", "3", "--top-k", "5"]
    assert cli(sample) == 0
    first = capsys.readouterr().out
    assert cli(sample) == 0
    assert capsys.readouterr().out == first and "the dog" in first
    assert cli(["evaluate", "--run", "cli"]) == 0
    assert f"{find_run('cli').info().best_valid_bpc:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.rounds=0", "model.rounds must be at least 1"),
        ("model.num_leaves=-1", "model.num_leaves must be at least 2"),
        ("model.learning_rate=0", "model.learning_rate must be at least"),
        ("model.early_stopping=-3", "model.early_stopping must be at least 0"),
        ("model.leaves=3", "unknown key 'model.leaves'"),
        ("data.kind=centered", "data.kind must be sequence"),
    ],
)
def test_invalid_values_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    book = write_text(tmp_path / "book.txt")
    assert cli(["gbm", str(RECIPE), f'data.books=["{book}"]', "data.context=9", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list_runs() == []


def test_gbm_refuses_other_model_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "mlp.toml"
    recipe.write_text('[model]\ntype = "mlp"\n', encoding="utf-8")
    assert cli(["gbm", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "langinterp gbm" in err and "'mlp'" in err and len(err.splitlines()) == 1
