"""Every recipe option, declared once: its type, default, allowed values and a one-line description.

The recipe loader validates against these declarations, `langinterp recipe show` fills in their defaults,
and `langinterp recipe options` prints them, so this file is the single source of truth. The `[model]`
table depends on `model.type`: each model family declares its own options in `MODEL_TABLES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langinterp.layer_names import INITIALIZATIONS, KINDS, NORMALIZATIONS


@dataclass(frozen=True)
class Option:
    """One recipe key. `types` lists the accepted Python types; a list option also names its item types."""

    default: Any
    doc: str
    types: tuple[type, ...]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    item_types: tuple[type, ...] | None = None


def integer(default: int, doc: str, minimum: int | None = None, maximum: int | None = None) -> Option:
    return Option(default, doc, (int,), minimum, maximum)


def real(default: float, doc: str, minimum: float | None = None, maximum: float | None = None) -> Option:
    return Option(default, doc, (float,), minimum, maximum)


def choice(default: str, doc: str, choices: tuple[str, ...]) -> Option:
    return Option(default, doc, (str,), choices=choices)


def text(default: str, doc: str) -> Option:
    return Option(default, doc, (str,))


def flag(default: bool, doc: str) -> Option:
    return Option(default, doc, (bool,))


def items(default: list, doc: str, item_types: tuple[type, ...]) -> Option:
    return Option(default, doc, (list,), item_types=item_types)


Table = dict[str, "Option | Table"]

LAYER_CHOICES = (*KINDS, "linear")


def _layer_table(layer: str, n: int, segments: int, what: str) -> Table:
    return {
        "layer": choice(
            layer,
            f"{what}: a piecewise-polynomial kind, or 'linear' for nn.Linear followed by ReLU",
            LAYER_CHOICES,
        ),
        "n": integer(n, f"{what}: nodes per segment (polynomial degree + 1)", 1, 16),
        "segments": integer(segments, f"{what}: segments per link", 1, 4096),
    }


MLP_TABLE: Table = {
    "input": _layer_table("continuous", 2, 128, "input layer over the character codes"),
    "hidden": {
        **_layer_table("continuous", 2, 2, "hidden layers"),
        "layers": integer(1, "number of hidden layers (0: input layer straight to the output layer)", 0, 64),
        "width": integer(200, "units in each hidden layer, and the input layer's output width", 1, 1_000_000),
    },
    "output": _layer_table("continuous", 2, 2, "output layer to the 128 character logits"),
    "normalization": choice("layer", "normalisation after each piecewise layer but the last", NORMALIZATIONS),
    "initialization": choice(
        "linear",
        "weight initialisation of piecewise layers (linear gives every layer a gradient)",
        INITIALIZATIONS,
    ),
}

GBM_TABLE: Table = {
    "rounds": integer(100, "boosting rounds (each adds one tree per character class)", 1, 100_000),
    "num_leaves": integer(100, "most leaves in one tree", 2, 131_072),
    "max_depth": integer(32, "deepest a tree may grow (-1 or 0: no limit)", -1, 1024),
    "learning_rate": real(0.1, "shrinkage applied to each new tree", 1e-6, 10.0),
    "min_data_in_leaf": integer(20, "fewest training windows in a leaf", 1, 10**9),
    "early_stopping": integer(
        10,
        "stop after this many rounds without a lower held-out loss (0: off; needs held-out text)",
        0,
        100_000,
    ),
    "threads": integer(0, "LightGBM threads (0: LightGBM's default, one per core)", 0, 4096),
    "max_train_windows": integer(
        0, "train on a seeded random subsample of this many windows (0: all)", 0, 10**12
    ),
}

MAMBA_TABLE: Table = {
    "d_model": integer(64, "width of the residual stream and of the embedding tied to the read-out", 1, 4096),
    "layers": integer(5, "Mamba blocks", 1, 256),
    "d_state": integer(32, "state entries per channel of the selective scan", 1, 1024),
    "expand": integer(2, "the mixer's inner width is expand * d_model", 1, 64),
    "d_conv": integer(4, "width of the causal depthwise convolution before the scan", 1, 64),
    "projection": choice(
        "linear",
        "the mixer's in and out projections: 'linear' (nn.Linear) or a piecewise-polynomial kind",
        LAYER_CHOICES,
    ),
    "n": integer(3, "piecewise projections: nodes per segment (polynomial degree + 1)", 1, 16),
    "segments": integer(2, "piecewise projections: segments per link", 1, 4096),
    "initialization": choice("linear", "weight initialisation of piecewise projections", INITIALIZATIONS),
    "scan": choice(
        "auto",
        "selective scan: auto (mamba-ssm's CUDA kernel when installed and on CUDA, the CPU kernel on a CPU, "
        "else chunked), chunked (pure PyTorch, parallel over chunks), cpu_kernel (fused C++, CPU only) or "
        "sequential (the slow reference loop)",
        ("auto", "chunked", "cpu_kernel", "sequential"),
    ),
}

TRANSFORMER_TABLE: Table = {
    "d_model": integer(64, "width of every position's vector; a multiple of heads", 1, 65536),
    "heads": integer(4, "attention heads (each of width d_model / heads)", 1, 1024),
    "layers": integer(2, "transformer blocks", 1, 256),
    "feedforward": integer(128, "hidden width of each block's feed-forward pair", 1, 1_000_000),
    "positions": choice(
        "learned", "position code over 0..context-1: learned or sinusoidal", ("learned", "sinusoidal")
    ),
    "input": {
        "kind": choice("continuous", "piecewise kind of the per-character input layer", KINDS),
        "n": integer(2, "input layer: nodes per segment", 1, 16),
        "segments": integer(128, "input layer: segments (128 puts every code in its own)", 1, 4096),
    },
    "layer": choice(
        "continuous",
        "Q/K/V, attention output and feed-forward layers: a piecewise kind, or 'linear' for nn.Linear + GELU",
        LAYER_CHOICES,
    ),
    "n": integer(2, "piecewise block layers: nodes per segment", 1, 16),
    "segments": integer(2, "piecewise block layers: segments per link", 1, 4096),
    "initialization": choice("linear", "weight initialisation of the piecewise layers", INITIALIZATIONS),
}


def _conv_table(
    kernel: list[int], stride: list[int], channels: list[int], segments: list[int], n: int
) -> Table:
    """The options shared by the convolutional and tail-focus networks, with a family's defaults."""
    return {
        "kernel": items(kernel, "kernel width of each convolution layer, first layer first", (int,)),
        "stride": items(stride, "stride of each convolution layer", (int,)),
        "channels": items(channels, "1 (the characters), then the output channels of each layer", (int,)),
        "segments": items(segments, "segments per link of each layer (128 for the character layer)", (int,)),
        "n": integer(n, "nodes per segment of every layer (polynomial degree + 1)", 1, 16),
        "kind": choice("continuous", "piecewise kind of every convolution layer", KINDS),
        "normalization": choice(
            "layer", "normalisation over channels after each convolution", NORMALIZATIONS
        ),
        "initialization": choice("linear", "weight initialisation of the piecewise layers", INITIALIZATIONS),
    }


CONV_TABLE: Table = _conv_table([10, 10, 10], [10, 10, 10], [1, 10, 100, 100], [128, 2, 2], 3)

TAIL_FOCUS_TABLE: Table = {
    **_conv_table([16, 2, 16], [8, 1, 8], [1, 250, 250, 100], [128, 2, 2], 2),
    "focus": items(
        [0, 0, 16],
        "per layer: read only the last focus[i] positions of the layer's input (0: all of them)",
        (int,),
    ),
}

GPT_TABLE: Table = {
    "d_model": integer(128, "width of the embeddings and the residual stream; a multiple of heads", 1, 65536),
    "heads": integer(4, "attention heads (each of width d_model / heads)", 1, 1024),
    "layers": integer(4, "transformer blocks (attention + GELU MLP of width 4 * d_model)", 1, 256),
    "dropout": real(0.0, "dropout on the embeddings, attention weights and residual branches", 0.0, 0.9),
    "tied": flag(True, "share the read-out weights with the character embedding (GPT-2 style)"),
}

MODEL_TABLES: dict[str, Table] = {
    "mlp": MLP_TABLE,
    "gbm": GBM_TABLE,
    "mamba": MAMBA_TABLE,
    "transformer": TRANSFORMER_TABLE,
    "conv": CONV_TABLE,
    "tail_focus": TAIL_FOCUS_TABLE,
    "gpt": GPT_TABLE,
}

DATA_TABLE: Table = {
    "books": items(
        [50133], "training text: Gutenberg ids and/or paths of local UTF-8 text files", (int, str)
    ),
    "kind": choice(
        "sequence",
        "sequence: predict the next character; centered: predict the middle character from both sides",
        ("sequence", "centered"),
    ),
    "context": integer(
        16,
        "window width: sequence reads it all and predicts the next character; centered hides the middle "
        "character (odd width) and reads the others",
        1,
        1_000_000,
    ),
    "holdout": real(0.1, "tail fraction of each training book held out for validation", 0.0, 0.9),
    "valid_books": items(
        [], "separate validation books or files (when set, nothing is held out)", (int, str)
    ),
    "test_books": items([], "books or files kept for `langinterp evaluate --split test`", (int, str)),
    "num_workers": integer(0, "DataLoader worker processes", 0, 64),
}

OPTIMIZER_TABLE: Table = {
    "name": choice(
        "lion",
        "lion, sparse_lion (updates only entries that received a gradient), adam or adamw",
        ("lion", "sparse_lion", "adam", "adamw"),
    ),
    "lr": real(1e-4, "learning rate", 0.0, 10.0),
    "weight_decay": real(0.0, "decoupled weight decay", 0.0, 10.0),
}

SCHEDULER_TABLE: Table = {
    "name": choice(
        "plateau",
        "plateau (on validation loss), cosine (over max steps) or none",
        ("plateau", "cosine", "none"),
    ),
    "factor": real(0.5, "plateau: factor the learning rate is multiplied by", 0.0, 1.0),
    "patience": integer(5, "plateau: epochs without improvement before lowering the rate", 0, 10_000),
    "min_lr": real(0.0, "the learning rate never goes below this", 0.0, 10.0),
}

TRAINER_TABLE: Table = {
    "max_epochs": integer(100, "passes over the training text", 1, 1_000_000),
    "max_steps": integer(-1, "stop after this many optimizer steps (-1: no limit)", -1, 10**12),
    "batch_size": integer(1000, "windows per batch (per device)", 1, 10**7),
    "seed": integer(0, "seed for initialisation, shuffling and sampling", 0, 2**32 - 1),
    "accelerator": choice("auto", "auto (CUDA when present), cpu or gpu", ("auto", "cpu", "gpu", "cuda")),
    "devices": Option("auto", "devices per node: a number or 'auto'", (int, str), 1, 4096, choices=("auto",)),
    "num_nodes": integer(1, "machines taking part in DDP training", 1, 4096),
    "strategy": choice(
        "auto", "auto, or ddp for data-parallel training over devices and nodes", ("auto", "ddp")
    ),
    "precision": choice(
        "auto",
        "auto (bf16-mixed on GPU, 32 on CPU), 32, bf16-mixed or 16-mixed",
        ("auto", "32", "bf16-mixed", "16-mixed"),
    ),
    "gradient_clip": real(0.0, "clip the gradient norm to this (0: no clipping)", 0.0, 1e9),
    "accumulate": integer(1, "batches whose gradients are summed before each optimizer step", 1, 10_000),
    "samples": integer(2, "sample generations written to the run directory after each epoch", 0, 100),
    "sample_chars": integer(120, "characters in each of those samples", 1, 100_000),
}

TOP_LEVEL: Table = {
    "description": text("", "what the recipe is for, in a line"),
}


def model_types() -> tuple[str, ...]:
    return tuple(MODEL_TABLES)


def recipe_table(model_type: str) -> Table:
    """The whole schema for a recipe whose model is of `model_type`."""
    return {
        **TOP_LEVEL,
        "data": DATA_TABLE,
        "model": {"type": choice("mlp", "model family", model_types()), **MODEL_TABLES[model_type]},
        "optimizer": OPTIMIZER_TABLE,
        "scheduler": SCHEDULER_TABLE,
        "trainer": TRAINER_TABLE,
    }


def flatten(table: Table, prefix: str = "") -> dict[str, Option]:
    """Every option of a table under its dotted key."""
    flat: dict[str, Option] = {}
    for key, entry in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(entry, Option):
            flat[dotted] = entry
        else:
            flat.update(flatten(entry, dotted + "."))
    return flat
