"""Training end to end on tiny texts: real Lightning runs, real checkpoints on disk, CPU only."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    MirrorServer,
    assert_same_training_state,
    checkpoint_payload,
    child_environment,
    word_text,
)
from torch.utils.data import DataLoader, TensorDataset

from langinterp import training
from langinterp.cli import run as cli
from langinterp.data import WindowDataset, build_splits, dataset_kind
from langinterp.errors import UsageError
from langinterp.evaluation import evaluate_model
from langinterp.inference import load_for_inference
from langinterp.interrupts import InterruptAt
from langinterp.models import build_model, registered_types
from langinterp.recipe import Recipe, load_recipe, resolve
from langinterp.runs import find_run, list_runs, load_checkpoint
from langinterp.text import encode
from langinterp.trainable import LN2, PLATEAU_KEY, CharLM, EpochMeans, on_logging_step
from langinterp.training import TrainingInterrupted, train

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "small",
    "birds",
    "sing",
    "in",
    "tall",
    "green",
    "trees",
]
MEMORISE = (
    "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
    "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass doors."
)


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    return word_text(tmp_path / "small.txt", WORDS, 260)


def tiny_recipe(text: Path, *overrides: str) -> Recipe:
    raw = {
        "data": {"books": [str(text)], "context": 4, "holdout": 0.2},
        "model": {"hidden": {"width": 16}},
        "optimizer": {"lr": 3e-3},
        "trainer": {"max_epochs": 2, "batch_size": 32, "samples": 1, "sample_chars": 20},
    }
    return resolve(raw, overrides, name="tiny")


def test_training_lowers_the_loss_and_writes_the_run(small_text: Path) -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    run = train(tiny_recipe(small_text), quiet=True)
    # Lightning switched on strict deterministic mode for the CPU run; the process gets its own back.
    assert not torch.are_deterministic_algorithms_enabled()
    info = run.info()
    assert (info.status, info.epochs) == ("finished", 2)
    assert info.parameters == sum(p.numel() for p in build_model(tiny_recipe(small_text)).parameters())
    assert info.best_valid_bpc is not None and 0 < info.best_valid_bpc < 7
    assert info.extra["fold"] == {str(small_text): {"folded": 0, "dropped": 0}}
    assert load_recipe(run.recipe_path).values == tiny_recipe(small_text).values

    rows = run.metrics_path.read_text().splitlines()
    header = rows[0].split(",")
    losses = [
        float(r.split(",")[header.index("train_loss_step")])
        for r in rows[1:]
        if r.split(",")[header.index("train_loss_step")]
    ]
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5
    assert "valid_bpc" in header and "chars_per_s" in header

    for which in ("best", "last"):
        payload = checkpoint_payload(run.checkpoint(which))  # weights_only=True: plain data only
        assert payload["hyper_parameters"]["recipe"] == tiny_recipe(small_text).values
        assert payload["hyper_parameters"]["vocab_size"] == 128
        loaded = load_checkpoint(run.checkpoint(which))
        model = build_model(loaded.recipe)
        model.load_state_dict(loaded.state_dict)
    assert loaded.global_step == info.steps

    samples = run.samples_path.read_text()
    assert "--- epoch 1, sample 1" in samples and "--- epoch 2, sample 1" in samples


def test_epoch_means_weigh_each_batch_by_its_size() -> None:
    strategy = pl.strategies.SingleDeviceStrategy(device="cpu")
    means = EpochMeans()
    assert means.means(strategy) is None
    means.add(torch.tensor([1.0, 0.5]), 3)
    means.add(torch.tensor([5.0, 1.0]), 1)
    torch.testing.assert_close(means.means(strategy), torch.tensor([2.0, 0.625]))


class LoggingStepProbe(pl.LightningModule):
    """Records, on every batch, our logging-step test beside Lightning's own (a private property)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[bool, bool]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append((on_logging_step(self.trainer), self.trainer._logger_connector.should_update_logs))
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_step_metrics_are_logged_on_lightnings_logging_steps(accumulate: int) -> None:
    # Step values reach the CSV only if they are logged on the steps Lightning writes; off by one, each row
    # would carry the values of an earlier step.
    probe = LoggingStepProbe()
    trainer = pl.Trainer(
        max_steps=23,
        log_every_n_steps=5,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(probe, DataLoader(TensorDataset(torch.randn(48, 2)), batch_size=4))
    ours = [mine for mine, _ in probe.seen]
    assert len(ours) == 23 * accumulate
    assert ours == [theirs for _, theirs in probe.seen] and any(ours) and not all(ours)


def test_logged_validation_scores_are_the_saved_models_held_out_scores(small_text: Path) -> None:
    recipe = tiny_recipe(small_text, "trainer.max_epochs=1")
    run = train(recipe, quiet=True)
    with run.metrics_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    logged = next(row for row in rows if row["valid_bpc"])
    epoch = next(row for row in rows if row["train_loss_epoch"])
    assert float(epoch["train_bpc_epoch"]) == pytest.approx(float(epoch["train_loss_epoch"]) / LN2)

    model = load_for_inference(run.name, "last", device="cpu").model
    valid = build_splits(recipe.data).valid
    scores = evaluate_model(model, valid, recipe.data["kind"])
    assert float(logged["valid_bpc"]) == pytest.approx(scores.bits_per_char, rel=1e-5)
    assert float(logged["valid_acc"]) == pytest.approx(scores.accuracy, rel=1e-5)

    # The last validation batch is partial, so a plain mean of the batch means would not match.
    batch = recipe.trainer["batch_size"]
    dataset = WindowDataset(valid, recipe.data["context"], dataset_kind(recipe.data["kind"], model.reads))
    assert len(dataset) % batch
    with torch.no_grad():
        batch_means = [
            torch.nn.functional.cross_entropy(model(x), y).item()
            for x, y in (
                dataset.__getitems__(list(range(first, min(first + batch, len(dataset)))))
                for first in range(0, len(dataset), batch)
            )
        ]
    plain_bits = sum(batch_means) / len(batch_means) / LN2
    assert float(logged["valid_bpc"]) != pytest.approx(plain_bits, rel=1e-5)


def test_runs_are_repeatable_and_resume_continues_exactly(small_text: Path) -> None:
    whole = train(tiny_recipe(small_text), run_name="whole", quiet=True)
    again = train(tiny_recipe(small_text), run_name="again", quiet=True)
    assert_same_training_state(whole.checkpoint("last"), again.checkpoint("last"))
    assert PLATEAU_KEY in checkpoint_payload(whole.checkpoint("last"))  # the plateau state is compared too

    first = train(tiny_recipe(small_text, "trainer.max_epochs=1"), run_name="halves", quiet=True)
    assert checkpoint_payload(first.checkpoint("last"))["epoch"] == 0
    # Through the CLI: `--resume` without a name takes the newest run; the flag's value is an override.
    assert cli(["train", "--resume", "trainer.max_epochs=2", "--quiet"]) == 0
    assert first.info().status == "finished" and first.info().epochs == 2
    assert load_recipe(first.recipe_path).trainer["max_epochs"] == 2
    assert_same_training_state(whole.checkpoint("last"), first.checkpoint("last"))


def test_resume_after_ctrl_c_mid_epoch_trains_as_if_uninterrupted(small_text: Path) -> None:
    whole = train(tiny_recipe(small_text), run_name="whole", quiet=True)
    with pytest.raises(TrainingInterrupted):
        train(tiny_recipe(small_text), run_name="cut", extra_callbacks=[InterruptAt(2)], quiet=True)
    cut = train(None, resume="cut", quiet=True)
    assert cut.info().steps == whole.info().steps
    assert_same_training_state(whole.checkpoint("last"), cut.checkpoint("last"))
    # The cut epoch's samples too: same prompt (the epoch's first window), same model, same seeds.
    assert cut.samples_path.read_text() == whole.samples_path.read_text()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_run_that_max_steps_stops_mid_epoch_resumes_that_epoch(small_text: Path, accumulate: int) -> None:
    steps = f"trainer.accumulate={accumulate}"
    per_epoch = train(tiny_recipe(small_text, steps), run_name="epochs", quiet=True).info().steps // 2
    limit = f"trainer.max_steps={per_epoch + 2}"  # into the second epoch
    whole = train(tiny_recipe(small_text, steps, limit), run_name="whole", quiet=True)
    short = train(tiny_recipe(small_text, steps, "trainer.max_steps=3"), run_name="short", quiet=True)
    info = short.info()
    assert (info.status, info.steps, info.epochs) == ("finished", 3, 0)  # the first epoch is not done
    assert "--- epoch 1 (stopped at step 3), sample 1" in short.samples_path.read_text()
    assert checkpoint_payload(short.checkpoint("last"))["epoch"] == 0
    # The rest of the first epoch, then the second: the batches, the plateau scheduler and the weights of
    # the uninterrupted run (before, the resumed run skipped to the second epoch).
    resumed = train(tiny_recipe(small_text, steps, limit), resume="short", quiet=True)
    assert (resumed.info().steps, resumed.info().epochs) == (whole.info().steps, 1)
    assert_same_training_state(whole.checkpoint("last"), resumed.checkpoint("last"))


class CtrlCInOptimizerStep(pl.Callback):
    """Delivers a real SIGINT from inside the optimizer's step number ``step`` (as its last update ends,
    before Lightning counts the step): stopping right there would leave the weights updated and the step
    uncounted, so that the resumed run would apply that batch twice."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def deliver(optimizer: object, args: object, kwargs: object) -> None:
            if trainer.global_step == self.step:
                signal.raise_signal(signal.SIGINT)

        trainer.optimizers[0].register_step_post_hook(deliver)


class CtrlCBeforeBatch(pl.Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt) as a given batch of an epoch is about to start."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if (trainer.current_epoch, args[-1]) == self.at:
            raise KeyboardInterrupt


def test_a_real_ctrl_c_stops_between_batches_and_resumes_exactly(small_text: Path) -> None:
    handler = signal.getsignal(signal.SIGINT)
    whole = train(tiny_recipe(small_text), run_name="whole", quiet=True)
    with pytest.raises(TrainingInterrupted):
        train(tiny_recipe(small_text), run_name="cut", extra_callbacks=[CtrlCInOptimizerStep(2)], quiet=True)
    assert signal.getsignal(signal.SIGINT) == handler
    # The step under way when Ctrl-C came is finished and counted.
    assert load_checkpoint(find_run("cut").checkpoint("last")).global_step == 3
    cut = train(None, resume="cut", quiet=True)
    assert_same_training_state(whole.checkpoint("last"), cut.checkpoint("last"))


def test_ctrl_c_in_a_terminal_stops_the_command_with_a_resume_hint(
    small_text: Path, langinterp_home: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "long.toml"
    recipe.write_text(
        f'[data]\nbooks = ["{small_text}"]\ncontext = 4\n[model]\nhidden = {{ width = 16 }}\n'
        "[trainer]\nmax_epochs = 10000\nbatch_size = 32\nsamples = 0\n"
    )
    command = [sys.executable, "-m", "langinterp", "train", str(recipe), "--quiet", "--run-name", "ctrl"]
    process = subprocess.Popen(
        command, env=child_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = langinterp_home / "runs" / "ctrl" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C does, once training is under way
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "continue with `langinterp train --resume ctrl`" in err
    run = find_run("ctrl")
    assert run.info().status == "interrupted"
    assert load_checkpoint(run.checkpoint("last")).global_step == run.info().steps > 0


def test_ctrl_c_between_accumulated_batches_resumes_exactly(small_text: Path) -> None:
    # With gradients summed over 3 batches, a stop after 4 batches of an epoch leaves one batch's gradient
    # unapplied: the checkpoint goes back to the last optimizer step, and the resumed run redoes that batch.
    accumulate = tiny_recipe(small_text, "trainer.accumulate=3")
    whole = train(accumulate, run_name="whole", quiet=True)
    with pytest.raises(TrainingInterrupted):
        train(accumulate, run_name="cut", extra_callbacks=[CtrlCBeforeBatch(1, 4)], quiet=True)
    cut = train(None, resume="cut", quiet=True)
    assert cut.info().steps == whole.info().steps
    assert_same_training_state(whole.checkpoint("last"), cut.checkpoint("last"))


def test_resuming_with_more_epochs_stretches_a_cosine_schedule(small_text: Path) -> None:
    cosine = ["scheduler.name='cosine'", "scheduler.min_lr=1e-5"]
    run = train(tiny_recipe(small_text, *cosine, "trainer.max_epochs=1"), run_name="cosine", quiet=True)
    steps = run.info().steps
    assert checkpoint_payload(run.checkpoint("last"))["lr_schedulers"][0]["T_max"] == steps
    assert cli(["train", "--resume", "cosine", "trainer.max_epochs=3", "--quiet"]) == 0
    schedule = checkpoint_payload(run.checkpoint("last"))["lr_schedulers"][0]
    assert run.info().steps == 3 * steps
    # Sized for the three epochs; having reached its minimum it stays there instead of climbing back up
    # (with the one-epoch length kept, the rate would be back at its start after two more epochs).
    assert schedule["T_max"] == 3 * steps
    assert schedule["_last_lr"][0] == pytest.approx(1e-5)


def test_ctrl_c_stops_cleanly_and_leaves_a_resumablecheckpoint_payload(small_text: Path) -> None:
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="--resume stopped"):
        train(tiny_recipe(small_text), run_name="stopped", extra_callbacks=[InterruptAt(3)], quiet=True)
    assert signal.getsignal(signal.SIGINT) == handler
    run = find_run("stopped")
    assert run.info().status == "interrupted"
    assert load_checkpoint(run.checkpoint("last")).global_step == 3

    resumed = train(None, resume="stopped", quiet=True)
    info = resumed.info()
    assert (info.status, info.epochs) == ("finished", 2)
    assert info.steps > 3


def test_a_tiny_model_memorises_a_short_text(tmp_path: Path) -> None:
    text = tmp_path / "memorise.txt"
    text.write_text(MEMORISE, encoding="utf-8")
    recipe = resolve(
        {
            "data": {"books": [str(text)], "context": 6, "holdout": 0.0},
            "model": {"hidden": {"width": 32}},
            "optimizer": {"name": "adamw", "lr": 0.02},
            "scheduler": {"name": "none"},
            "trainer": {"max_epochs": 10, "batch_size": 32, "samples": 0},
        },
        name="memorise",
    )
    run = train(recipe, quiet=True)
    # No held-out text: the best checkpoint is the last one.
    assert run.checkpoint("best").read_bytes() == run.checkpoint("last").read_bytes()
    loaded = load_checkpoint(run.checkpoint("best"))
    model = build_model(loaded.recipe)
    model.load_state_dict(loaded.state_dict)
    windows = WindowDataset([encode(MEMORISE)], 6, "sequence")
    codes, targets = windows.__getitems__(list(range(len(windows))))
    with torch.no_grad():
        accuracy = (model(codes.long()).argmax(dim=-1) == targets).float().mean().item()
    assert accuracy >= 0.95


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_builds_and_runs_one_batch(path: Path) -> None:
    recipe = load_recipe(path)
    if recipe.model["type"] not in registered_types():
        pytest.skip(f"{recipe.model['type']} is not a neural family (trained by its own command)")
    torch.manual_seed(0)
    module = CharLM(recipe)
    kind = dataset_kind(recipe.data["kind"], module.model.reads)
    text = torch.randint(32, 127, (recipe.data["context"] + 8,), dtype=torch.uint8)
    dataset = WindowDataset([text], recipe.data["context"], kind)
    loss, accuracy, chars = module.measure(dataset.__getitems__([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and 0 <= accuracy <= 1
    assert chars == (2 if module.model.reads == "window" else 2 * recipe.data["context"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_cli_trains_and_reports(small_text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "cli.toml"
    recipe.write_text(tiny_recipe(small_text, "trainer.max_epochs=1").to_toml(), encoding="utf-8")
    assert cli(["train", str(recipe), "--run-name", "cli", "--quiet", "trainer.samples=0"]) == 0
    out = capsys.readouterr().out
    assert "run cli: 1 epochs" in out and "valid_bpc" in out
    assert f"{small_text}: 0 characters folded to ASCII, 0 dropped" in out.replace("\n", "")
    assert [run.name for run in list_runs()] == ["cli"]


def test_cli_refuses_bad_requests(
    small_text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gbm = tmp_path / "gbm.toml"
    gbm.write_text(f'[data]\nbooks = ["{small_text}"]\n[model]\ntype = "gbm"\n', encoding="utf-8")
    assert cli(["train", str(gbm)]) == 2
    assert "gbm recipes train with `langinterp gbm`" in capsys.readouterr().err
    assert cli(["train", "--resume"]) == 2
    assert "no run in" in capsys.readouterr().err
    assert cli(["train"]) == 2
    assert "give a recipe file" in capsys.readouterr().err
    assert list_runs() == []


def test_data_that_cannot_be_read_ends_training_before_a_run_exists(
    http_mirror: MirrorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown book, or a text too short for one window, is one error line and leaves no failed run
    behind for `runs` to list and `generate` to pick as the newest."""
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(tiny_recipe(Path("x"), "data.books=[999999999]").to_toml(), encoding="utf-8")
    assert cli(["train", str(unknown), "--mirror", http_mirror.url, "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"error: book 999999999 not found at {http_mirror.url}"
    short = tmp_path / "short.txt"
    short.write_text("the fox", encoding="utf-8")
    too_short = tmp_path / "short.toml"
    too_short.write_text(tiny_recipe(short).to_toml(), encoding="utf-8")
    assert cli(["train", str(too_short), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "fewer than one window" in err and "\n" not in err
    assert list_runs() == []


def test_resume_refuses_to_change_the_model(small_text: Path) -> None:
    train(tiny_recipe(small_text, "trainer.max_epochs=1", "trainer.samples=0"), run_name="base", quiet=True)
    with pytest.raises(UsageError, match="cannot change model.hidden.width when resuming"):
        train(tiny_recipe(small_text, "model.hidden.width=8"), resume="base")
    with pytest.raises(UsageError, match="--run-name names a new run"):
        train(None, resume="base", run_name="other")


def test_hardware_settings() -> None:
    settings = training.lightning_hardware(tiny_recipe(Path("x")).trainer)
    if not torch.cuda.is_available():
        assert settings["accelerator"] == "cpu" and settings["precision"] == "32-true"
        assert settings["deterministic"] is True
        with pytest.raises(UsageError, match="no CUDA device"):
            training.lightning_hardware(tiny_recipe(Path("x"), 'trainer.accelerator="gpu"').trainer)


def test_ranks_agree_on_the_run_name(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tiny_recipe(Path("x"))
    for name in (*training.RANK_VARIABLES, training.RUN_ENV, "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert training.is_global_zero()
    assert training._shared_name(recipe, "given") == "given"
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(training.RUN_ENV, "from-rank-0")
    assert not training.is_global_zero()
    assert training._shared_name(recipe, None) == "from-rank-0"
    monkeypatch.delenv(training.RUN_ENV)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(UsageError, match="needs --run-name"):
        training._shared_name(recipe, None)
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert training._shared_name(recipe, None) == "tiny-job1234"
