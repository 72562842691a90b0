"""The reference character transformer: causal, order-sensitive, GPT-2 initialised, trainable end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from langinterp.cli import run as cli
from langinterp.errors import UsageError
from langinterp.models import build_model
from langinterp.models.gpt import GPT
from langinterp.recipe import load_recipe, resolve
from langinterp.runs import load_checkpoint
from langinterp.training import train

RECIPE = "recipes/gpt.toml"
TINY = ["model.d_model=16", "model.heads=2", "model.layers=2", "data.context=12"]
TEXT = "the quick brown fox jumps over the lazy dog. "


def tiny(*extra: str) -> GPT:
    torch.manual_seed(0)
    return build_model(load_recipe(RECIPE, [*TINY, *extra])).double().eval()


def test_changing_a_later_character_leaves_earlier_predictions_unchanged() -> None:
    model = tiny()
    codes = torch.randint(0, 128, (3, 12))
    changed = codes.clone()
    changed[:, 7] = (codes[:, 7] + 17) % 128
    with torch.no_grad():
        before, after = model(codes), model(changed)
    assert before.shape == (3, 12, 128)
    assert torch.equal(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_the_prediction_depends_on_the_order_of_the_characters() -> None:
    model = tiny()
    codes = torch.tensor([[ord(c) for c in "the horror"]])
    swapped = torch.tensor([[ord(c) for c in "eht horror"]])
    with torch.no_grad():
        assert not torch.allclose(model(codes)[:, -1], model(swapped)[:, -1], atol=1e-6)


def test_a_shorter_sequence_gives_the_same_predictions_as_the_start_of_a_longer_one() -> None:
    """Generation recomputes over a growing prompt: positions count from the start of the text."""
    model = tiny()
    codes = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(codes[:, :5]), model(codes)[:, :5], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at most 12"):
        model(torch.randint(0, 128, (1, 13)))


def test_the_initial_loss_is_close_to_a_uniform_guess() -> None:
    """GPT-2 initialisation: small logits at step 0, so training starts from about ln(128) nats."""
    torch.manual_seed(1)
    model = build_model(load_recipe(RECIPE))
    codes = torch.randint(0, 128, (4, 128))
    targets = torch.randint(0, 128, (4, 128))
    with torch.no_grad():
        loss = F.cross_entropy(model(codes).reshape(-1, 128), targets.reshape(-1)).item()
    assert abs(loss - math.log(128)) < 0.1


def test_tied_read_out_shares_the_embedding_and_untied_does_not() -> None:
    tied, untied = tiny("model.tied=true"), tiny("model.tied=false")
    assert tied.read_out.weight is tied.embedding.weight
    assert untied.read_out.weight is not untied.embedding.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 16 * 128


def test_every_layer_is_standard() -> None:
    """The reference has no piecewise layer: only Linear, Embedding, LayerNorm, GELU and Dropout."""
    allowed = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.GELU, torch.nn.Dropout)
    leaves = [m for m in tiny().modules() if not list(m.children())]
    assert leaves and all(isinstance(m, allowed) for m in leaves)


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(UsageError, match="multiple of model.heads"):
        build_model(load_recipe(RECIPE, [*TINY, "model.heads=3"]))


def test_trains_through_train_and_generates_from_the_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = tmp_path / "fox.txt"
    book.write_text(TEXT * 16, encoding="utf-8")
    recipe = resolve(
        load_recipe(RECIPE).values,
        [
            f"data.books=['{book}']",
            "data.context=16",
            "model.d_model=32",
            "model.layers=2",
            "optimizer.lr=1e-2",
            "optimizer.weight_decay=0.0",
            "scheduler.name='none'",
            "trainer.max_epochs=4",
            "trainer.batch_size=32",
            "trainer.samples=0",
        ],
        name="gpt-fox",
    )
    trained = train(recipe, run_name="gpt-fox", quiet=True)
    info = trained.info()
    assert info.status == "finished" and info.steps > 0
    assert info.best_valid_bpc is not None and info.best_valid_bpc < 1.0
    assert load_checkpoint(trained.checkpoint("last")).recipe.model["type"] == "gpt"

    capsys.readouterr()
    prompt = TEXT[:16]
    code = cli(["generate", "--run", str(trained.path), "-p", prompt, "-n", "60", "--greedy"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(prompt)
    assert out == (TEXT * 3)[: 16 + 60] + "\n"
