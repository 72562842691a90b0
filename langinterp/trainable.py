"""The LightningModule every neural model family trains in: loss, bits per character, accuracy, speed.

It wraps the recipe's model (`self.model`, so checkpoint keys read `model.<param>`) and saves the resolved
recipe as plain-data hyper-parameters, which is all `generate --checkpoint` needs. Both readers train the
same way: a window model gives logits[B, 128] against y[B], a sequence model logits[B, T, 128] against
y[B, T] with every position counted.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from langinterp.models import build_model
from langinterp.optim import build_optimizer, build_scheduler
from langinterp.recipe import Recipe
from langinterp.runs import checkpoint_hyperparameters
from langinterp.step_limit import cut_short
from langinterp.text import VOCAB_SIZE

LN2 = math.log(2.0)

PLATEAU_KEY = "langinterp_plateau_scheduler"


def on_logging_step(trainer: pl.Trainer) -> bool:
    """Whether the coming optimizer step is one on which Lightning writes step metrics to the loggers.

    Lightning's own test (a private property of its logger connector) counts the step about to be taken:
    every `log_every_n_steps`-th, and any once training has been told to stop. This is the same test on the
    public attributes, so that a Lightning upgrade cannot silently stop the CSV's step rows.
    """
    every = trainer.log_every_n_steps
    return every > 0 and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)


class EpochMeans:
    """Batch-size-weighted sums of a few scalars over an epoch, kept on the model's device.

    Why not Lightning's own epoch aggregation: every `self.log` call costs about 0.5 ms on the CPU (it copies
    the metric's metadata), a tenth of a small model's training step for four metrics. Adding into one tensor
    costs microseconds and needs no synchronisation until the epoch ends.
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, values: torch.Tensor, size: int) -> None:
        weighted = values.detach().float() * size
        self.sums = weighted if self.sums is None else self.sums + weighted
        self.count += size

    def means(self, strategy: Any) -> torch.Tensor | None:
        """The means over every rank's batches (`strategy.reduce` sums across ranks), None before any."""
        if self.sums is None:
            return None
        count = torch.tensor([float(self.count)], device=self.sums.device)
        totals = strategy.reduce(torch.cat((self.sums, count)), reduce_op="sum")
        return totals[:-1] / totals[-1]


class CharLM(pl.LightningModule):
    """Trains `build_model(recipe)` on (codes, targets) batches; logs train_* and valid_* metrics.

    The metrics keep the names Lightning gives `self.log(on_step=True, on_epoch=True)`: `train_loss_step`
    (and bpc, acc) for single steps, `train_loss_epoch` for epoch means, `valid_loss` for validation.
    """

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.save_hyperparameters(
            {**checkpoint_hyperparameters(recipe), "vocab_size": VOCAB_SIZE}, logger=False
        )
        self.model = build_model(recipe)
        self._epoch_started = 0.0
        self._epoch_chars = 0
        self._train_means = EpochMeans()
        self._valid_means = EpochMeans()
        self._monitor = "valid_loss"
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model(codes)

    def measure(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Cross-entropy (nats per character) and accuracy over every predicted position of the batch."""
        codes, targets = batch
        logits = self.model(codes)
        logits = logits.reshape(-1, logits.shape[-1]).float()
        targets = targets.reshape(-1)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        return loss, accuracy, targets.numel()

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self._epoch_chars = 0
        self._train_means = EpochMeans()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, accuracy, chars = self.measure(batch)
        size = batch[0].shape[0]
        self._train_means.add(torch.stack((loss, accuracy)), size)
        self._epoch_chars += chars
        # Step values reach the CSV only on Lightning's logging steps (every trainer.log_every_n_steps), so
        # they are logged there, and on each epoch's first batch for the progress bar; the condition is the
        # same on every rank, as sync_dist needs.
        if batch_idx == 0 or on_logging_step(self.trainer):
            bpc = loss.detach() / LN2
            metrics = {"train_loss_step": loss, "train_bpc_step": bpc, "train_acc_step": accuracy}
            self.log_dict(
                metrics, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True, batch_size=size
            )
            # Characters per second over the epoch so far, all ranks together: smoother than per step, and
            # it counts data loading, which is part of what training costs.
            elapsed = max(time.perf_counter() - self._epoch_started, 1e-9)
            speed = self._epoch_chars * self.trainer.world_size / elapsed
            self.log("chars_per_s", speed, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, accuracy, _ = self.measure(batch)
        self._valid_means.add(torch.stack((loss, accuracy)), batch[0].shape[0])

    def on_validation_epoch_start(self) -> None:
        self._valid_means = EpochMeans()

    def on_validation_epoch_end(self) -> None:
        self._log_means("valid", "", self._valid_means)

    def _log_means(self, split: str, suffix: str, means: EpochMeans) -> None:
        """Log `<split>_loss<suffix>`, bpc and acc from an epoch's means (already summed over ranks)."""
        values = means.means(self.trainer.strategy)
        if values is None:
            return
        loss, accuracy = values
        metrics = {"loss": loss, "bpc": loss / LN2, "acc": accuracy}
        named = {f"{split}_{name}{suffix}": value for name, value in metrics.items()}
        self.log_dict(named, on_step=False, on_epoch=True, prog_bar=True)

    def has_validation(self) -> bool:
        """Whether the data module serves held-out text (Lightning skips validation when it does not)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return datamodule is not None and bool(datamodule.val_dataloader())

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.model.parameters(), self.recipe.optimizer)
        self._monitor = "valid_loss" if self.has_validation() else "train_loss_epoch"
        total = int(min(self.trainer.estimated_stepping_batches, 2**62))
        self._total_steps = total
        scheduler = build_scheduler(
            optimizer, self.recipe.scheduler, total_steps=total, monitor=self._monitor
        )
        self._plateau = None
        if scheduler is not None and scheduler["interval"] == "epoch":
            # Lightning steps epoch schedulers after the end-of-epoch checkpoint is written and skips that
            # step on resume, so a resumed run would lag one step behind; stepping in on_train_epoch_end,
            # before the save, keeps the scheduler state in the checkpoint exact.
            self._plateau = scheduler["scheduler"]
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
            return optimizer
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_train_start(self) -> None:
        # A resumed run restores the cosine schedule's length from its checkpoint; when the resume raised
        # max_epochs or max_steps, stretch it to the new end, from the learning rate reached so far (a run
        # that had finished its schedule stays at the minimum) rather than let it climb back up.
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                config.scheduler.T_max = max(1, self._total_steps)

    def on_train_epoch_end(self) -> None:
        # Lightning calls this before the checkpoint callbacks, which therefore see train_loss_epoch.
        self._log_means("train", "_epoch", self._train_means)
        value = self.trainer.callback_metrics.get(self._monitor)
        if self._plateau is not None and value is not None and not cut_short(self.trainer):
            self._plateau.step(float(value))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint[PLATEAU_KEY] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get(PLATEAU_KEY)
