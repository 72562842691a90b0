"""The layers' custom ops called eagerly through a plain autograd.Function, past the dispatcher.

The passes of kernel.py and triton_ops.py are ``torch.library`` custom ops, so that torch.compile sees one
opaque op with a fake implementation. Called eagerly, such an op travels a long way through Python: the
dispatcher to its autograd wrapper, a redispatch to its body behind a dynamo guard, and the same again for
every gradient op of the backward pass. On this project's 2-core CPU the input layers' forward and
backward pass at batch 1024, about 2 ms, took 1.09-1.16x as long that way (benchmarks/dispatch.py,
benchmarks/README.md). ``eager_or_op`` hands the layers one callable: on plain tensors with storage, outside
torch.compile, an autograd.Function running the op's own body forward and the same backward formula over
the gradient ops' bodies, so both give the same results to the bit; else the custom op, whose fake
implementation serves the meta device, fake tensors and torch.compile's tracing, and whose dispatcher
serves tensor subclasses. With no graph to record (grad mode off, as in generation and evaluation, or no
input that needs a gradient) the callable runs the op's body alone. Function.apply costs several
microseconds a call, a large part of a layer's call at batch 1: generation with sparse_mlp took 0.26-0.28
ms per character without it and 0.31-0.35 through it (benchmarks/train.py, three runs each, alternating).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_through_ops = False  # set inside through_custom_ops()


@contextmanager
def through_custom_ops() -> Iterator[None]:
    """Inside this block every eager_or_op callable calls its custom op, the dispatcher included: what the
    layers did before eager.py, kept to measure the difference (benchmarks/dispatch.py) and to rule it out
    when something looks wrong."""
    global _through_ops
    previous, _through_ops = _through_ops, True
    try:
        yield
    finally:
        _through_ops = previous


PLAIN = (Tensor, nn.Parameter)  # not subclasses: fake tensors, DTensor, ...


def eager_or_op(
    op: Callable[..., Tensor],
    body: Callable[..., Tensor],
    setup_context: Callable[..., None],
    backward: Callable[..., tuple],
) -> Callable[..., Tensor]:
    """A callable with op's arguments: autograd over ``body`` (op's implementation), ``setup_context`` and
    ``backward`` (op's autograd formula, over the gradient ops' bodies) when every tensor argument has
    storage and torch.compile is not tracing, else op itself. Pass every argument positionally: the context
    sees exactly the arguments given."""

    def forward(ctx, *args) -> Tensor:
        output = body(*args)
        setup_context(ctx, args, output)
        return output

    guarded = once_differentiable(backward)

    def backward_once(ctx, *grads) -> tuple:
        # The engine runs a backward pass with grad mode off unless asked for a graph of it (create_graph):
        # only then is once_differentiable's guard needed, whose no_grad block costs a microsecond or two.
        return guarded(ctx, *grads) if torch.is_grad_enabled() else backward(ctx, *grads)

    # forward takes ctx itself: with a separate setup_context, Function.apply binds the arguments to
    # forward's signature through inspect on every call, which costs more than the rest of the call.
    function = type(
        f"Eager_{body.__name__.strip('_')}",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward_once)},
    )

    def call(*args) -> Tensor:
        if _through_ops or torch.compiler.is_compiling():
            return op(*args)
        # One loop over the arguments, no list or generator: in a training step this runs with cold caches
        # (piecewise.py's forward says why that matters).
        record = False
        for argument in args:
            if isinstance(argument, Tensor):
                if type(argument) not in PLAIN or argument.is_meta:  # no storage to hand the body
                    return op(*args)
                record = record or argument.requires_grad
        if record and torch.is_grad_enabled():
            return function.apply(*args)
        return body(*args)  # no graph to record (generation, evaluation): the body alone, as apply runs it

    call.__doc__ = f"{body.__doc__}\n\nEager calls run through an autograd.Function (eager.py)."
    return call
