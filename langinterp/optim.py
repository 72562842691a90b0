"""Optimizers and learning-rate schedulers, built from a recipe's `[optimizer]` and `[scheduler]` tables.

Lion is the default because the seed research found it trains high-order networks best. Sparse Lion exists
for the same networks: a piecewise layer touches only the segment holding each input, so most weights get
an exactly zero gradient on a batch. Plain Lion would still move them (its momentum keeps a sign) and decay
their momentum; sparse Lion leaves both alone, so a weight changes only when data reached it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lion_pytorch import Lion
from torch import Tensor

from langinterp.errors import UsageError

OPTIMIZERS = ("lion", "sparse_lion", "adam", "adamw")
SCHEDULERS = ("plateau", "cosine", "none")


def sparse_lion_update(
    p: Tensor, grad: Tensor, exp_avg: Tensor, lr: float, wd: float, beta1: float, beta2: float
) -> None:
    """Lion's update (decay, signed step, momentum) applied only where `grad` is non-zero."""
    if grad.is_sparse:
        grad = grad.to_dense()
    touched = grad != 0
    step = (exp_avg * beta1 + grad * (1.0 - beta1)).sign_()
    p.copy_(torch.where(touched, p * (1.0 - lr * wd) - lr * step, p))
    exp_avg.copy_(torch.where(touched, exp_avg * beta2 + grad * (1.0 - beta2), exp_avg))


class SparseLion(Lion):
    """Lion that updates a weight, and its momentum, only when the weight received a gradient."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, **kwargs)
        self.update_fn = sparse_lion_update


def build_optimizer(params: Iterable[Any], options: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer a recipe's `[optimizer]` table names, over `params`."""
    name, lr, weight_decay = options["name"], options["lr"], options["weight_decay"]
    if name == "lion":
        return Lion(params, lr=lr, weight_decay=weight_decay)
    if name == "sparse_lion":
        return SparseLion(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, options: dict[str, Any], *, total_steps: int, monitor: str
) -> dict[str, Any] | None:
    """A Lightning `lr_scheduler` config for the recipe's `[scheduler]` table, or None for "none".

    Plateau watches `monitor` once per epoch; cosine anneals over `total_steps` optimizer steps.
    """
    name = options["name"]
    if name == "none":
        return None
    if name == "plateau":
        if options["factor"] >= 1.0:
            raise UsageError(f"scheduler.factor must be below 1 for plateau; got {options['factor']:g}")
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=options["factor"], patience=options["patience"], min_lr=options["min_lr"]
        )
        return {"scheduler": scheduler, "monitor": monitor, "interval": "epoch", "strict": True}
    if name == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total_steps), eta_min=options["min_lr"]
        )
        return {"scheduler": scheduler, "interval": "step"}
    raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
