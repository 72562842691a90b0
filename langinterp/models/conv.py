"""Convolutional and tail-focus networks: strided 1-D piecewise-polynomial convolutions over a long window.

A piecewise convolution with kernel k and stride s is a HighOrderLinear(channels * k -> out) applied to
every patch of k positions: the input [B, L, C] is unfolded into patches [B, L', C * k] (a view, then
one copy) and the fast fully connected layer maps them, so the cost is that of a dense layer over the
patches whatever the number of segments (the package's own convolution builds a dense, zero-filled
expansion that grows with segments). The first layer reads character codes: CharacterInput(k, out) over
the unfolded codes, a table lookup per character. Between layers a normalisation (over channels) keeps the
next layer's inputs in its [-1, 1] domain. The last layer's output is flattened and a linear read-out
gives the 128 logits of the character after the window. Patches are aligned to the end of their input:
when (L - k) is not a multiple of s, the first positions are left out, never the last (the characters
next to the one being predicted).

Tail focus. `focus[i]` is how many of the last positions of its input layer i reads: before convolving,
layer i keeps only input positions L_i - focus[i] .. L_i - 1 (positions of the characters for layer 0, of
the previous layer's outputs after that). `focus[i] = 0` means keep them all, and says so: it is not a
tail of length zero. Later layers thus look only at the end of the text, next to the character being
predicted. Characters outside every layer's focused tail cannot change the prediction; `receptive_field`
says how many characters at the end of the window can.
"""

from __future__ import annotations

from torch import Tensor, nn

from langinterp.errors import UsageError
from langinterp.layers import CharacterInput, HighOrderLinear, normalization
from langinterp.models.base import CharModel
from langinterp.models.registry import register
from langinterp.recipe import Recipe
from langinterp.text import VOCAB_SIZE


class PiecewiseConv1d(nn.Module):
    """Channel-last piecewise convolution [B, L, C] -> [B, (L - k) // s + 1, out], unfold + dense layer."""

    def __init__(
        self, channels: int, out: int, kernel: int, stride: int, n: int, segments: int, kind: str, init: str
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.linear = HighOrderLinear(channels * kernel, out, n, segments, kind=kind, initialization=init)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.unfold(1, self.kernel, self.stride).flatten(2))  # patch index: c * k + j


class CharacterConv1d(nn.Module):
    """The first layer: codes [B, L] -> [B, (L - k) // s + 1, out], a piecewise table lookup per character."""

    def __init__(
        self, out: int, kernel: int, stride: int, n: int, segments: int, kind: str, init: str
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.input = CharacterInput(kernel, out, n, segments, kind=kind, initialization=init)

    def forward(self, codes: Tensor) -> Tensor:
        return self.input(codes.unfold(1, self.kernel, self.stride))


def output_length(length: int, kernel: int, stride: int) -> int:
    return (length - kernel) // stride + 1


class ConvNet(CharModel):
    """Piecewise convolutions (with optional tail focus) -> flatten -> linear read-out to 128 logits."""

    reads = "window"

    def __init__(self, context: int, options: dict) -> None:
        super().__init__(context)
        kernel, stride, channels = options["kernel"], options["stride"], options["channels"]
        segments = options["segments"]
        self.focus = list(options.get("focus", [0] * len(kernel)))
        self.lengths = check_shapes(context, kernel, stride, channels, segments, self.focus)
        piece = {"n": options["n"], "kind": options["kind"], "init": options["initialization"]}
        self.convs = nn.ModuleList(
            [CharacterConv1d(channels[1], kernel[0], stride[0], segments=segments[0], **piece)]
        )
        self.convs.extend(
            PiecewiseConv1d(channels[i], channels[i + 1], kernel[i], stride[i], segments=segments[i], **piece)
            for i in range(1, len(kernel))
        )
        self.norms = nn.ModuleList(normalization(options["normalization"], c) for c in channels[1:])
        self.read_out = nn.Linear(self.lengths[-1] * channels[-1], VOCAB_SIZE)

    def receptive_field(self) -> int:
        """How many characters at the end of the window can change the prediction."""
        span = self.lengths[-1]  # positions of the last output all count
        for i in reversed(range(len(self.convs))):
            conv = self.convs[i]
            span = (span - 1) * conv.stride + conv.kernel
            if self.focus[i]:
                span = min(span, self.focus[i])
        return min(span, self.context)

    def forward(self, codes: Tensor) -> Tensor:
        x = codes
        for focus, conv, norm in zip(self.focus, self.convs, self.norms, strict=True):
            if focus:
                x = x[:, -focus:]
            x = x[:, (x.shape[1] - conv.kernel) % conv.stride :]  # align patches to the end, not the start
            x = norm(conv(x))
        return self.read_out(x.flatten(1))


def check_shapes(
    context: int,
    kernel: list[int],
    stride: list[int],
    channels: list[int],
    segments: list[int],
    focus: list[int],
) -> list[int]:
    """The length each layer produces, after checking the lists fit together and the window is long enough."""
    layers = len(kernel)
    if layers == 0:
        raise UsageError("model.kernel must name at least one layer")
    for name, values in (("stride", stride), ("segments", segments), ("focus", focus)):
        if len(values) != layers:
            raise UsageError(
                f"model.{name} needs one entry per layer ({layers}, as model.kernel); got {values}"
            )
    if len(channels) != layers + 1 or channels[0] != 1:
        raise UsageError(
            f"model.channels must be 1 (the characters) then one width per layer; got {channels}"
        )
    if min(kernel + stride + segments + channels) < 1 or min(focus) < 0:
        raise UsageError("model.kernel, stride, segments and channels must be positive, focus not negative")
    lengths, length = [], context
    for i in range(layers):
        if focus[i] > length:
            raise UsageError(f"model.focus[{i}] = {focus[i]} but layer {i} reads only {length} positions")
        length = focus[i] or length
        if length < kernel[i]:
            raise UsageError(f"layer {i} reads {length} positions, fewer than its kernel ({kernel[i]})")
        length = output_length(length, kernel[i], stride[i])
        lengths.append(length)
    return lengths


def build(recipe: Recipe) -> ConvNet:
    return ConvNet(recipe.data["context"], recipe.model)


register("conv")(build)
register("tail_focus")(build)
