"""`train`: one recipe -> one run directory, through Lightning (progress, checkpoints, metrics, DDP, resume).

Multi-process training: Lightning's DDP launcher re-runs the same command in child processes, and torchrun
or SLURM start every rank themselves. Every rank must agree on the run directory and only global rank 0 may
create or write it. The launching rank chooses the name and hands it to its children in `RUN_ENV`; ranks
started by torchrun/SLURM take it from `--run-name` or from the job id, which they all share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from langinterp.callbacks import BatchAudit, BatchSeed, ProgressBar, RunRecorder, Samples
from langinterp.checkpoint_io import AtomicCheckpointIO
from langinterp.data import CharDataModule
from langinterp.errors import LanginterpError, NotFoundError, UsageError
from langinterp.interrupts import InterruptAt, StopBetweenBatches
from langinterp.metrics_log import MetricsCSV
from langinterp.models import registered_types
from langinterp.paths import atomic_write, runs_dir
from langinterp.recipe import Recipe
from langinterp.runs import RunDir, create_run, find_run, timestamped_name
from langinterp.shuffle import epoch_shuffled
from langinterp.step_limit import ResumableStepLimit, whole_epochs
from langinterp.trainable import CharLM

RUN_ENV = "LANGINTERP_RUN"
AUDIT_ENV = "LANGINTERP_AUDIT_DIR"
INTERRUPT_ENV = "LANGINTERP_INTERRUPT_AT_STEP"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
RESUMABLE_TABLES = ("trainer",)
RESUMABLE_KEYS = ("data.num_workers",)
OTHER_COMMANDS = {"gbm": "gbm recipes train with `langinterp gbm`"}
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*could not find the monitored key.*",
    r".*number of training batches .* is smaller than the logging interval.*",
    r".*You're resuming from a checkpoint that ended before the epoch ended.*",  # our sampler resumes
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*Total length of `list` across ranks is zero.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*when logging on epoch level in distributed setting.*",  # CharLM logs means it summed over ranks
)


class TrainingData(CharDataModule):
    """The recipe's data with the training order fixed by (seed, epoch), which makes resume exact."""

    def train_dataloader(self) -> DataLoader:
        return epoch_shuffled(super().train_dataloader(), self.seed, self._next_epoch, self._batches_done)

    def _next_epoch(self) -> int:
        """The epoch about to be served: epochs already processed (restored from a checkpoint on resume)."""
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _batches_done(self) -> int:
        """Batches of that epoch already trained: restored from a checkpoint written mid-epoch, else 0."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.completed


class TrainingInterrupted(LanginterpError):
    """Training stopped on Ctrl-C; the run's `last.ckpt` holds where it stopped."""

    exit_code = 130


def is_global_zero() -> bool:
    """Rank 0 of the whole job, judged from the launchers' environment before any process group exists.

    LOCAL_RANK is set for Lightning's child processes, NODE_RANK on other machines, RANK by torchrun and
    SLURM_PROCID by SLURM; the process that sees none of them above 0 is the one that starts the job.
    """
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in RANK_VARIABLES)


def _external_world() -> bool:
    """True when torchrun or SLURM started several ranks (rather than Lightning's own launcher)."""
    torchrun = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return (torchrun or slurm) and RUN_ENV not in os.environ


def _shared_name(recipe: Recipe, run_name: str | None) -> str:
    """The run name every rank of the job agrees on."""
    if run_name:
        return run_name
    if RUN_ENV in os.environ:
        return os.environ[RUN_ENV]
    if _external_world():
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if job == "none":
            raise UsageError(
                "a job started by torchrun needs --run-name so that every rank writes the same run"
            )
        return f"{recipe.name}-job{job}"
    return timestamped_name(recipe.name)


def _check_trainable(recipe: Recipe) -> None:
    model_type = recipe.model["type"]
    if model_type not in registered_types():
        hint = OTHER_COMMANDS.get(model_type, f"no neural model family is registered as {model_type!r}")
        raise UsageError(f"`langinterp train` trains neural models only: {hint}")


def _differences(stored: Any, wanted: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(stored.keys() | wanted.keys()):
            yield from _differences(stored.get(key), wanted.get(key), f"{prefix}{key}.")
    elif stored != wanted:
        yield prefix[:-1]


def resumed_recipe(stored: Recipe, wanted: Recipe | None) -> Recipe:
    """The recipe a resumed run continues with: the stored one, with changes to trainer keys allowed only.

    Anything else (model, data, optimizer) would make the checkpoint mean something else.
    """
    if wanted is None:
        return stored
    for key in _differences(stored.values, wanted.values):
        if not key.startswith(tuple(f"{table}." for table in RESUMABLE_TABLES)) and key not in RESUMABLE_KEYS:
            raise UsageError(
                f"cannot change {key} when resuming; only trainer.* and data.num_workers may change"
            )
    return Recipe(values=wanted.values, name=stored.name)


def _with_hardware(
    recipe: Recipe, accelerator: str | None, devices: int | str | None, precision: str | None
) -> Recipe:
    overrides = [
        f"trainer.{key}={value!r}" if isinstance(value, str) else f"trainer.{key}={value}"
        for key, value in (("accelerator", accelerator), ("devices", devices), ("precision", precision))
        if value is not None
    ]
    return recipe.with_overrides(overrides) if overrides else recipe


def lightning_hardware(trainer: dict[str, Any]) -> dict[str, Any]:
    """Trainer keyword arguments for the recipe's accelerator, devices, nodes, strategy and precision.

    "auto" means CUDA when present (never MPS: its kernels differ), and bf16-mixed precision on GPU only.
    """
    accelerator = trainer["accelerator"]
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    elif accelerator == "cuda":
        accelerator = "gpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise UsageError("trainer.accelerator is gpu but no CUDA device is available")
    precision = trainer["precision"]
    if precision == "auto":
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    elif precision == "32":
        precision = "32-true"
    return {
        "accelerator": accelerator,
        "devices": trainer["devices"],
        "num_nodes": trainer["num_nodes"],
        "strategy": trainer["strategy"],
        "precision": precision,
        # Bit-for-bit repeatable on CPU; on GPU some scatter kernels have no deterministic form.
        "deterministic": True if accelerator == "cpu" else "warn",
    }


def _resolve(
    recipe: Recipe | None, resume: str | Path | bool | None, hardware: dict[str, Any]
) -> tuple[Recipe, RunDir | None, Path | None]:
    """The recipe to train and, when resuming, the run and the checkpoint to continue from (None, None for
    a new run, whose directory `_new_run` creates once its data is ready). Creates nothing."""
    if resume is None or resume is False:
        if recipe is None:
            raise UsageError("give a recipe to train, or --resume a run")
        recipe = _with_hardware(recipe, **hardware)
        _check_trainable(recipe)
        lightning_hardware(recipe.trainer)  # refuse impossible hardware before a run directory exists
        return recipe, None, None
    run = find_run(os.environ.get(RUN_ENV) or (None if resume is True else resume))
    last = run.checkpoint("last")
    if not last.is_file():
        raise NotFoundError(f"run {run.name!r} has no {last.name} to resume from")
    recipe = _with_hardware(resumed_recipe(run.recipe(), recipe), **hardware)
    _check_trainable(recipe)
    return recipe, run, last


def _new_run(recipe: Recipe, run_name: str | None) -> RunDir:
    """A new run's directory: created by global rank 0, which every other rank finds by the shared name."""
    name = _shared_name(recipe, run_name)
    return create_run(recipe, name) if is_global_zero() else RunDir(runs_dir() / name)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's banner lines and the warnings that do not apply to how langinterp uses it."""
    logger = logging.getLogger("pytorch_lightning")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _torch_flags_kept() -> Iterator[None]:
    """Put back torch's deterministic mode and cuDNN flags, which Lightning's Trainer sets for the process.

    Otherwise a training run on the CPU (strict deterministic mode) leaves later work in the same process,
    a notebook's or a test's, under that mode: CUDA operations without a deterministic form then raise, and
    the piecewise layers avoid their atomic Triton kernel."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


@contextlib.contextmanager
def _children_know(name: str) -> Iterator[None]:
    """Tell DDP child processes (which inherit the environment) which run directory they belong to."""
    previous = os.environ.get(RUN_ENV)
    os.environ[RUN_ENV] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = previous


def _callbacks(run: RunDir, recipe: Recipe, quiet: bool, extra: Sequence[Callback]) -> list[Callback]:
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename="best",
        monitor="valid_loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [
        BatchSeed(recipe.trainer["seed"]),
        checkpoint,
        RunRecorder(run, checkpoint),
        StopBetweenBatches(),
        ResumableStepLimit(),
    ]
    if recipe.data["kind"] == "sequence":
        callbacks.append(Samples(run, recipe))
    if not quiet:
        callbacks.append(ProgressBar())
    if os.environ.get(AUDIT_ENV):
        callbacks.append(BatchAudit(Path(os.environ[AUDIT_ENV])))
    if os.environ.get(INTERRUPT_ENV):
        callbacks.append(InterruptAt(int(os.environ[INTERRUPT_ENV])))
    return [*callbacks, *extra]


def train(
    recipe: Recipe | None,
    *,
    run_name: str | None = None,
    resume: str | Path | bool | None = None,
    mirror: str | None = None,
    accelerator: str | None = None,
    devices: int | str | None = None,
    precision: str | None = None,
    extra_callbacks: Sequence[Callback] = (),
    quiet: bool = False,
) -> RunDir:
    """Train `recipe` into a new run directory, or continue a run (`resume`: its name, path, or True for
    the newest) from its last checkpoint with the same step, optimizer and scheduler state.

    accelerator/devices/precision override the recipe's trainer keys (and are recorded in the run).
    Returns the run directory; Ctrl-C raises `TrainingInterrupted` after saving a resumable checkpoint.
    """
    hardware = {"accelerator": accelerator, "devices": devices, "precision": precision}
    if run_name and not (resume is None or resume is False):
        raise UsageError("--run-name names a new run; --resume continues an existing one")
    recipe, run, ckpt_path = _resolve(recipe, resume, hardware)
    options = recipe.trainer
    settings = lightning_hardware(options)
    with _quiet_lightning(), _torch_flags_kept():
        pl.seed_everything(options["seed"], workers=True, verbose=False)
        module = CharLM(recipe)
        datamodule = TrainingData(recipe, reads=module.model.reads, mirror=mirror)
        if run is None:
            if is_global_zero():
                # The data before the run directory that this rank creates (Lightning then finds the books
                # cached and the splits built): an unknown book, no network or a text too short for the
                # window ends here, with no failed run left behind.
                datamodule.prepare_data()
                datamodule.setup()
            run = _new_run(recipe, run_name)
        elif is_global_zero():
            atomic_write(run.recipe_path, recipe.to_toml())
            run.update_info(status="running")
        trainer = pl.Trainer(
            **settings,
            max_epochs=options["max_epochs"],
            max_steps=options["max_steps"],
            gradient_clip_val=options["gradient_clip"] or None,
            accumulate_grad_batches=options["accumulate"],
            callbacks=_callbacks(run, recipe, quiet, extra_callbacks),
            logger=MetricsCSV(run.metrics_path),
            plugins=[AtomicCheckpointIO()],
            enable_progress_bar=not quiet,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
            default_root_dir=run.path,
        )
        sigint = signal.getsignal(signal.SIGINT)
        try:
            with _children_know(run.name):
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit as stop:
            # Lightning turns Ctrl-C into sys.exit(1) after our RunRecorder saved last.ckpt.
            if trainer.interrupted:
                raise TrainingInterrupted(
                    f"interrupted at step {trainer.global_step}; continue with "
                    f"`langinterp train --resume {run.name}`"
                ) from stop
            raise
        finally:
            signal.signal(signal.SIGINT, sigint)
    if trainer.is_global_zero:
        _finish(run, trainer, datamodule)
    return run


def _finish(run: RunDir, trainer: pl.Trainer, datamodule: CharDataModule) -> None:
    """Best = last when there was no validation; record final metrics and the fold report."""
    best, last = run.checkpoint("best"), run.checkpoint("last")
    if not best.is_file() and last.is_file():
        atomic_write(best, last.read_bytes())
    recorder = next(c for c in trainer.callbacks if isinstance(c, RunRecorder))
    final = {
        key.removesuffix("_epoch"): float(value)
        for key, value in trainer.callback_metrics.items()
        if not key.endswith("_step")
    }
    folds = {
        name: {"folded": report.folded, "dropped": report.dropped}
        for name, report in datamodule.fold_reports.items()
    }
    info = run.info()
    run.update_info(
        status="finished",
        epochs=whole_epochs(trainer),
        steps=trainer.global_step,
        best_valid_bpc=recorder.best_valid_bpc(),
        extra={**info.extra, "final": final, "fold": folds},
    )
