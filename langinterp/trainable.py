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


class CharLM(pl.LightningModule):
    """Trains `build_model(recipe)` on (codes, targets) batches; logs train_* and valid_* metrics."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.save_hyperparameters(
            {**checkpoint_hyperparameters(recipe), "vocab_size": VOCAB_SIZE}, logger=False
        )
        self.model = build_model(recipe)
        self._epoch_started = 0.0
        self._epoch_chars = 0
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

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, accuracy, chars = self.measure(batch)
        size = batch[0].shape[0]
        metrics = {"train_loss": loss, "train_bpc": loss.detach() / LN2, "train_acc": accuracy}
        self.log_dict(metrics, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=size)
        # Characters per second over the epoch so far, all ranks together: smoother than per step, and it
        # counts data loading, which is part of what training costs.
        self._epoch_chars += chars
        elapsed = max(time.perf_counter() - self._epoch_started, 1e-9)
        speed = self._epoch_chars * self.trainer.world_size / elapsed
        self.log("chars_per_s", speed, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, accuracy, _ = self.measure(batch)
        metrics = {"valid_loss": loss, "valid_bpc": loss / LN2, "valid_acc": accuracy}
        self.log_dict(metrics, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=batch[0].shape[0])

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
        value = self.trainer.callback_metrics.get(self._monitor)
        if self._plateau is not None and value is not None and not cut_short(self.trainer):
            self._plateau.step(float(value))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint[PLATEAU_KEY] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get(PLATEAU_KEY)
