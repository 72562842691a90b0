"""Optimizers and schedulers: sparse Lion leaves untouched entries (and their momentum) alone."""

import pytest
import torch
from lion_pytorch import Lion

from langinterp.errors import UsageError
from langinterp.optim import SparseLion, build_optimizer, build_scheduler


def _step(
    optimizer_class: type, weight: torch.Tensor, grads: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    parameter = torch.nn.Parameter(weight.clone())
    optimizer = optimizer_class([parameter], lr=0.1, weight_decay=0.5)
    for grad in grads:
        parameter.grad = grad.clone()
        optimizer.step()
    return parameter.detach(), optimizer.state[parameter]["exp_avg"]


def test_sparse_lion_updates_only_entries_with_a_gradient() -> None:
    weight = torch.tensor([1.0, -2.0, 3.0, 0.5])
    everywhere = torch.tensor([0.4, -0.2, 0.3, 0.1])
    partial = torch.tensor([0.0, 0.7, 0.0, -0.3])
    sparse_weight, sparse_momentum = _step(SparseLion, weight, [everywhere, partial])
    dense_weight, dense_momentum = _step(Lion, weight, [everywhere, partial])
    after_first, momentum_first = _step(Lion, weight, [everywhere])

    untouched = partial == 0
    # Entries without a gradient in the second step keep the weight and momentum of the first step...
    assert torch.equal(sparse_weight[untouched], after_first[untouched])
    assert torch.equal(sparse_momentum[untouched], momentum_first[untouched])
    # ...where plain Lion moves them on its momentum alone and decays that momentum.
    assert not torch.equal(dense_weight[untouched], after_first[untouched])
    assert not torch.equal(dense_momentum[untouched], momentum_first[untouched])
    # Entries with a gradient get exactly Lion's update.
    assert torch.equal(sparse_weight[~untouched], dense_weight[~untouched])
    assert torch.equal(sparse_momentum[~untouched], dense_momentum[~untouched])


def test_sparse_lion_accepts_sparse_gradients() -> None:
    table = torch.nn.Embedding(6, 3, sparse=True)
    before = table.weight.detach().clone()
    optimizer = SparseLion(table.parameters(), lr=0.1)
    table(torch.tensor([1, 4])).sum().backward()
    optimizer.step()
    changed = (table.weight.detach() != before).any(dim=1)
    assert changed.tolist() == [False, True, False, False, True, False]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("lion", Lion), ("sparse_lion", SparseLion), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_build_optimizer(name: str, expected: type) -> None:
    optimizer = build_optimizer(
        [torch.nn.Parameter(torch.zeros(2))], {"name": name, "lr": 0.01, "weight_decay": 0.1}
    )
    assert type(optimizer) is expected
    assert optimizer.param_groups[0]["lr"] == 0.01
    assert optimizer.param_groups[0]["weight_decay"] == 0.1


def _scheduler(name: str, **changes: float) -> dict | None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    options = {"name": name, "factor": 0.5, "patience": 0, "min_lr": 0.1, **changes}
    return build_scheduler(optimizer, options, total_steps=10, monitor="valid_loss")


def test_schedulers() -> None:
    assert _scheduler("none") is None
    plateau = _scheduler("plateau")
    assert plateau["monitor"] == "valid_loss" and plateau["interval"] == "epoch"
    plateau["scheduler"].step(1.0)
    plateau["scheduler"].step(2.0)
    assert plateau["scheduler"].optimizer.param_groups[0]["lr"] == 0.5
    cosine = _scheduler("cosine")
    assert cosine["interval"] == "step"
    for _ in range(10):
        cosine["scheduler"].optimizer.step()
        cosine["scheduler"].step()
    assert cosine["scheduler"].optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(UsageError, match="scheduler.factor"):
        _scheduler("plateau", factor=1.0)
