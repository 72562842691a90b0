"""Ctrl-C during training: stop where the run's state is consistent, the same way on every DDP rank.

A KeyboardInterrupt raised wherever Python happens to be can land inside an optimizer step, leaving some
weights updated and the step uncounted: the checkpoint saved then resumes into a state no uninterrupted
run passes through. Under DDP it is worse: the processes stop at different batches, and one waits forever
in a collective the others never join. `StopBetweenBatches` turns the first Ctrl-C into a request that
takes effect as a batch is about to start (under DDP a training batch, the same on every rank); a second
Ctrl-C acts at once. `rewind_to_last_step` makes the checkpoint saved then exact when gradients are
accumulated over several batches.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist


class RankAgreement:
    """Whether any rank has asked to stop, decided alike on every rank without holding any of them up.

    Each check returns whether some rank had a request at the previous check: a background all-reduce
    (over gloo, on the CPU, so that a GPU run is never synchronised for it) combines the ranks' requests
    while the batch in between runs. Every rank makes the same sequence of checks, one per batch, so the
    reductions pair up.
    """

    def __init__(self) -> None:
        self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.flag = torch.zeros(1, dtype=torch.int32)
        self.work: Any = None

    def check(self, requested: bool) -> bool:
        decided = False
        if self.work is not None:
            self.work.wait()
            decided = bool(self.flag.item())
        self.flag = torch.tensor([int(requested)], dtype=torch.int32)
        self.work = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return decided

    def finish(self) -> None:
        """Wait for the last reduction, which every rank started too."""
        if self.work is not None:
            self.work.wait()
            self.work = None


class StopBetweenBatches(pl.Callback):
    """Makes the first Ctrl-C stop training as the next batch is about to start (see the module docstring).

    In one process the stop comes at the next training or validation batch; under DDP at the training batch
    after the next, on every rank, since the ranks learn of a request through `RankAgreement`. The signal
    handler is installed from the main thread only (Python allows no other); the ranks' agreement runs
    whatever the thread.
    """

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None
        self.agreement: RankAgreement | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = False
        distributed = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
        self.agreement = RankAgreement() if distributed else None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        self._restore()

    def _restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _stop_if_requested(self) -> None:
        stop = self.requested if self.agreement is None else self.agreement.check(self.requested)
        if stop:
            self.requested = False
            raise KeyboardInterrupt

    def on_train_batch_start(self, *args: Any) -> None:
        self._stop_if_requested()

    def on_validation_batch_start(self, *args: Any) -> None:
        # Under DDP only training batches are checked: their count is the same on every rank by
        # construction (the sampler pads), which the pairing of the ranks' reductions relies on.
        if self.agreement is None:
            self._stop_if_requested()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.agreement is not None:
            self.agreement.finish()
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()


def rewind_to_last_step(trainer: pl.Trainer) -> None:
    """Count the batches since the last optimizer step as not trained.

    With gradients accumulated over several batches, a stop between two optimizer steps leaves gradients
    that no checkpoint holds; the weights are still those of the last step, so counting those batches as
    untrained makes the resumed run redo them and step exactly where an uninterrupted run would. (The
    epoch's last batch always steps, so a stop after it has nothing to rewind.)
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    done = progress.current.completed
    partial = done % trainer.accumulate_grad_batches
    if not partial or done >= trainer.num_training_batches:
        return
    for tracker in (progress.current, progress.total):
        tracker.completed -= partial
        tracker.ready = tracker.started = tracker.processed = tracker.completed


class InterruptAt(pl.Callback):
    """Debug hook: every rank raises KeyboardInterrupt as optimizer step `step` is about to start, as a Ctrl-C
    landing there would; the tests use it to stop runs at a chosen step. Enabled by an environment variable
    only (training.INTERRUPT_ENV)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt
