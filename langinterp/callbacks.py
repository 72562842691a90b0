"""Lightning callbacks of a training run: repeatable epochs, run.json bookkeeping, Ctrl-C, samples, audit.

Each one does one job and, where it writes into the run directory, does so on global rank 0 only.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar

from langinterp.errors import first_line
from langinterp.interrupts import rewind_to_last_step
from langinterp.paths import atomic_write
from langinterp.recipe import Recipe
from langinterp.runs import RunDir
from langinterp.sampling import SamplingOptions, generate
from langinterp.shuffle import EpochShuffle, batch_seed, epoch_seed
from langinterp.step_limit import cut_short, whole_epochs
from langinterp.text import decode


class BatchSeed(pl.Callback):
    """Reseed the random sources before each training batch, from (seed, epoch, batch index).

    Lightning does not checkpoint random states; with this, whatever draws from them during a batch
    (dropout, say) draws the same numbers whether the run was resumed or not, mid-epoch included. Only the
    generators of the CPU and of the model's GPU are reseeded (a couple of microseconds; `torch.manual_seed`
    visits every backend and costs about 0.1 ms, a per-batch cost worth avoiding): the models draw from
    nothing else, and the loader workers were seeded once when training started.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed = batch_seed(self.seed, trainer.current_epoch, batch_idx)
        torch.default_generator.manual_seed(seed)
        if pl_module.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # the current device's generator: this rank's GPU


class RunRecorder(pl.Callback):
    """Keeps run.json current (parameters, epochs, steps, best validation bpc, status) and handles Ctrl-C.

    On KeyboardInterrupt it saves `last.ckpt` where training stopped (at the last optimizer step, see
    `rewind_to_last_step`), so `--resume` continues from there, and marks the run interrupted; any other
    exception marks it failed.
    """

    def __init__(self, run: RunDir, checkpoint: ModelCheckpoint) -> None:
        self.run = run
        self.checkpoint = checkpoint

    def best_valid_bpc(self) -> float | None:
        score = self.checkpoint.best_model_score
        if score is None or not torch.isfinite(score):
            return None
        return float(score) / math.log(2.0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            parameters = sum(p.numel() for p in pl_module.parameters())
            self.run.update_info(status="running", parameters=parameters)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.run.update_info(
                epochs=whole_epochs(trainer),
                steps=trainer.global_step,
                best_valid_bpc=self.best_valid_bpc(),
            )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            rewind_to_last_step(trainer)
            trainer.save_checkpoint(self.run.checkpoint("last"))
            status, detail = "interrupted", {}
        else:
            status, detail = "failed", {"error": first_line(exception)}
        if trainer.is_global_zero:
            info = self.run.info()
            self.run.update_info(status=status, steps=trainer.global_step, extra={**info.extra, **detail})


class Samples(pl.Callback):
    """After each epoch, append a few seeded sample generations to the run's samples.txt.

    The prompt is the first window of the epoch's first batch, so samples continue real text; it is read
    from the epoch's training order (`EpochShuffle`), so an epoch resumed in its middle, whose first batch
    is not trained again, still gets the prompt, and the samples, of an uninterrupted run.
    """

    def __init__(self, run: RunDir, recipe: Recipe) -> None:
        self.run = run
        self.count = recipe.trainer["samples"]
        self.chars = recipe.trainer["sample_chars"]
        self.seed = recipe.trainer["seed"]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.count:
            return
        epoch = trainer.current_epoch
        order: EpochShuffle = trainer.train_dataloader.sampler
        first = order.first(epoch)
        if first is None:
            return
        prompt = decode(order.dataset[first][0].reshape(-1))
        parts = [self.run.samples_path.read_text(encoding="utf-8")] if self.run.samples_path.is_file() else []
        # An epoch that max_steps cut short gets its samples now and again when a resumed run ends it.
        stop = f" (stopped at step {trainer.global_step})" if cut_short(trainer) else ""
        for index in range(self.count):
            seed = epoch_seed(self.seed, epoch) + index
            text = "".join(generate(pl_module.model, prompt, self.chars, SamplingOptions(), seed=seed))
            heading = f"--- epoch {epoch + 1}{stop}, sample {index + 1}, seed {seed} ---"
            parts.append(f"{heading}\n{prompt}|{text}\n")
        atomic_write(self.run.samples_path, "".join(parts))


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor of a state dict, in key order: equal digests mean equal weights."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class BatchAudit(pl.Callback):
    """Debug hook: each rank records a digest of the batches it trained on and of its final weights.

    Written to `<directory>/rank<global rank>.json`; the DDP test uses it to show that ranks saw different
    batches and that the saved checkpoint holds rank 0's weights. Enabled by an environment variable only.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.digest = hashlib.sha256()
        self.batches = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.digest.update(batch[0].detach().cpu().contiguous().numpy().tobytes())
        self.batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "batches": self.batches,
            "batches_sha256": self.digest.hexdigest(),
            "weights_sha256": weights_digest(pl_module.model.state_dict()),
        }
        atomic_write(self.directory / f"rank{trainer.global_rank}.json", json.dumps(record, indent=2) + "\n")


class ProgressBar(RichProgressBar):
    """Rich progress bar showing loss, bits per character, characters per second and validation bpc."""

    SHOWN: ClassVar[dict[str, str]] = {
        "train_loss_step": "loss",
        "train_bpc_step": "bpc",
        "chars_per_s": "chars/s",
        "valid_bpc": "valid bpc",
    }

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = trainer.progress_bar_metrics
        shown: dict[str, Any] = {}
        for key, label in self.SHOWN.items():
            if key in metrics:
                value = float(metrics[key])
                shown[label] = f"{value:,.0f}" if key == "chars_per_s" else f"{value:.3f}"
        return shown
