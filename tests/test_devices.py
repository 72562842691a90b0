"""Every neural recipe runs on a device other than the CPU without touching the CPU.

No GPU is needed: the meta device has tensors without data, and mixing one with a CPU tensor raises. A
model that creates a tensor on the default device inside forward, backward or its recurrent step (the
usual way code that passes every CPU test breaks on CUDA) therefore fails here. The CPU kernels are not
involved: they take CPU tensors only, and on another device every layer and scan takes its pure-PyTorch
path, the one CUDA runs when mamba-ssm is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from langinterp.data import WindowDataset, dataset_kind
from langinterp.models import registered_types
from langinterp.recipe import load_recipe
from langinterp.trainable import CharLM

pytestmark = pytest.mark.gpu  # exercises CUDA where there is a GPU (tests/conftest.py)

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))
NEURAL = [path for path in RECIPES if load_recipe(path).model["type"] in registered_types()]


@pytest.mark.parametrize("path", NEURAL, ids=[p.stem for p in NEURAL])
def test_training_step_stays_on_the_device(path: Path) -> None:
    recipe = load_recipe(path)
    torch.manual_seed(0)
    module = CharLM(recipe)
    kind = dataset_kind(recipe.data["kind"], module.model.reads)
    text = torch.randint(32, 127, (recipe.data["context"] + 8,), dtype=torch.uint8)
    batch = WindowDataset([text], recipe.data["context"], kind).__getitems__([0, 1])
    module = module.to("meta")
    loss, _, _ = module.measure([t.to("meta") for t in batch])
    loss.backward()
    assert loss.device.type == "meta" and loss.shape == ()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "meta" for g in grads)


@pytest.mark.parametrize("name", ["mamba", "mamba_high_order"])
def test_recurrent_step_stays_on_the_device(name: str) -> None:
    model = CharLM(load_recipe(Path(__file__).parent.parent / "recipes" / f"{name}.toml")).model.to("meta")
    state = model.init_state(3)
    for _ in range(2):
        logits, state = model.step(torch.zeros(3, dtype=torch.long, device="meta"), state)
    assert logits.device.type == "meta" and logits.shape == (3, 128)
    assert all(t.device.type == "meta" for layer in state for t in layer)
