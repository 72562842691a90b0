"""A run that `trainer.max_steps` stops in the middle of an epoch, kept resumable from that very batch.

Lightning ends such a run as if the epoch were over (without validating it): it calls the epoch-end hooks,
writes the epoch-end checkpoint and counts the epoch as done, so a resume with a larger max_steps would
start the next epoch and never train the rest of this one. The samples and checkpoint are worth having at
the end of a run, so they stay; but the checkpoints written then record the epoch as still under way, in the
form a Ctrl-C between batches leaves (interrupts.py), so that the sampler (shuffle.py) skips the batches
already trained and the resumed run goes on as an uninterrupted run with the larger limit would. For the
same reason the plateau scheduler is not stepped on that partial epoch (trainable.py), and the run counts
whole epochs only.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def cut_short(trainer: pl.Trainer) -> bool:
    """Whether the epoch ending now (or last ended) stopped before its last batch at trainer.max_steps."""
    if trainer.max_steps < 0 or trainer.global_step < trainer.max_steps:
        return False
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready < trainer.num_training_batches


def whole_epochs(trainer: pl.Trainer) -> int:
    """Epochs trained to their end, during an epoch's end hooks or after training."""
    return trainer.fit_loop.epoch_progress.current.processed - int(cut_short(trainer))


def _record_as_under_way(checkpoint: dict[str, Any]) -> None:
    """The loop state of a stop before the next batch of the current epoch, as a Ctrl-C leaves it."""
    fit = checkpoint["loops"]["fit_loop"]
    for counts in fit["epoch_progress"].values():
        counts["processed"] = counts["completed"] = counts["started"] - 1
    for key in ("total", "current"):
        batches = fit["epoch_loop.batch_progress"][key]
        batches["ready"] = batches["completed"] + 1
    checkpoint["epoch"] = fit["epoch_progress"]["current"]["completed"]


class ResumableStepLimit(pl.Callback):
    """Rewrites the checkpoints saved when max_steps cuts an epoch short (see the module docstring)."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if cut_short(trainer):
            _record_as_under_way(checkpoint)
