"""The Triton path of the piecewise layers against the gather path and the plain-loop reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1
before anything imports Triton), and are also compiled for a Hopper GPU, down to machine code; with a GPU
they run on it. Skips where Triton is not installed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LAYER_CASES, inputs_inside_and_outside, reference

from langinterp.layers import CharacterInput, HighOrderLinear, character, codes_to_unit, piecewise, triton_ops

pytestmark = pytest.mark.gpu  # exercises CUDA where there is a GPU (tests/conftest.py)

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def layer_on(path, kind, n, s, inputs=3, outputs=4, dtype=torch.float64):
    torch.manual_seed(0)
    layer = HighOrderLinear(inputs, outputs, n, s, kind, initialization="uniform").to(DEVICE, dtype)
    layer.path = path
    return layer


def pass_of(layer, x, rounding=None):
    """y, dL/dx and dL/dW of one forward+backward with a fixed upstream gradient (drawn in float64, then
    rounded to ``rounding`` or the layer's type; a piecewise-constant layer's dL/dx is zero, which autograd
    leaves None on the gather path)."""
    x = x.detach().to(DEVICE, layer.weight.dtype).requires_grad_()
    y = layer(x)
    torch.manual_seed(2)
    y.backward(torch.randn(y.shape, dtype=torch.float64).to(DEVICE, rounding or y.dtype).to(y.dtype))
    grad_x = torch.zeros_like(x) if x.grad is None else x.grad
    return y.detach(), grad_x, layer.weight.grad


@pytest.mark.parametrize(("kind", "n", "s"), LAYER_CASES)
def test_triton_matches_gather_and_reference_in_float64(kind, n, s):
    x = inputs_inside_and_outside()
    ours = pass_of(layer_on("triton", kind, n, s), x)
    gather_layer = layer_on("gather", kind, n, s)
    theirs = pass_of(gather_layer, x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        ours[0].cpu(), reference(gather_layer.cpu(), x.detach()), rtol=1e-10, atol=1e-10
    )


@pytest.fixture
def triton_basis(monkeypatch):
    """The dense path builds its basis and dL/dx with the Triton kernels, as it does on CUDA (here, without a
    GPU, in Triton's interpreter, instead of the C kernel that the CPU takes)."""
    monkeypatch.setattr(piecewise, "_basis_op", lambda x, weight: triton_ops.piecewise_basis)


# Small K, where the dense path runs; K = 9 from n = 5 or 2 segments of 4 nodes, and n = 1.
DENSE_CASES = [
    ("continuous", 2, 2),
    ("continuous", 5, 2),
    ("continuous", 2, 8),
    ("discontinuous", 1, 3),
    ("discontinuous", 3, 2),
    ("polynomial", 4, 1),
]


@pytest.mark.parametrize(("kind", "n", "s"), DENSE_CASES)
def test_triton_dense_path_matches_gather_in_float64(triton_basis, kind, n, s):
    # 70 rows, 70 inputs: three row tiles, and several column tiles of the basis (70 K columns) and two
    # input tiles of dL/dx, the last of each partial.
    x = inputs_inside_and_outside(rows=70, inputs=70)
    ours = pass_of(layer_on("dense", kind, n, s, inputs=70), x)
    theirs = pass_of(layer_on("gather", kind, n, s, inputs=70), x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_triton_basis_op_passes_gradcheck():
    x = (torch.rand(6, 3, dtype=torch.float64, device=DEVICE) * 2.2 - 1.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: triton_ops.piecewise_basis(a, 5, 3, 2, 2), (x,))


@pytest.mark.parametrize(("kind", "n", "segments"), [("continuous", 2, 128), ("discontinuous", 3, 5)])
def test_character_input_on_triton_is_the_linear_layer_on_unit_codes(monkeypatch, kind, n, segments):
    # What CharacterInput takes on CUDA; here, without a GPU, in Triton's interpreter.
    monkeypatch.setattr(character, "_kernel_op", lambda codes, weight: character._triton_gather)
    torch.manual_seed(0)
    layer = CharacterInput(6, 7, n, segments, kind).to(DEVICE, torch.float64)
    codes = torch.randint(0, 128, (2, 9, 6), device=DEVICE)
    linear = layer.as_linear()
    linear.path = "gather"
    outputs = [layer(codes), linear(codes_to_unit(codes).double())]
    grads = []
    for y in outputs:
        layer.weight.grad = None
        y.square().sum().backward()
        grads.append(layer.weight.grad)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the automatic choice of Triton needs CUDA")
def test_character_input_on_cuda_takes_the_triton_kernels():
    layer = CharacterInput(6, 7, 2).cuda()
    codes = torch.randint(0, 128, (4, 6), device="cuda")
    assert character._kernel_op(codes, layer.weight) is character._triton_gather


def test_triton_covers_several_tiles_and_partial_ones():
    # 70 rows and 130 outputs: three row tiles and three output tiles, the last of each partial.
    torch.manual_seed(3)
    x = torch.rand(70, 5, dtype=torch.float64) * 2.4 - 1.2
    ours = pass_of(layer_on("triton", "continuous", 3, 16, inputs=5, outputs=130), x)
    theirs = pass_of(layer_on("gather", "continuous", 3, 16, inputs=5, outputs=130), x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_both_grad_weight_kernels_agree_in_float64(monkeypatch):
    # K = 33 takes the dense kernel; with its limit lowered, the same layer takes the atomic one. 70 rows
    # make two row tiles of the dense kernel (32 rows each at K <= 64) and a partial third.
    x = inputs_inside_and_outside(rows=70, inputs=5)
    layer = layer_on("triton", "continuous", 2, 32, inputs=5, outputs=70)
    assert triton_ops.repeatable(layer.weight)
    dense = pass_of(layer, x)
    layer.weight.grad = None
    monkeypatch.setattr(triton_ops, "DENSE_GRAD_WEIGHT_MAX_K", 0)
    assert not triton_ops.repeatable(layer.weight)
    atomic = pass_of(layer, x)
    for a, b in zip(dense, atomic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_forward_is_the_same_for_any_inputs_per_step(monkeypatch, n):
    # Several inputs per step add the same products in the same order as one: equal bit for bit. Seven
    # inputs leave a partial last step for every count tried.
    x = inputs_inside_and_outside(rows=40, inputs=7)
    layer = layer_on("triton", "discontinuous", n, 40, inputs=7, outputs=9, dtype=torch.float32)
    results = []
    for steps in (1, 2, 4, 8):
        monkeypatch.setattr(triton_ops, "inputs_per_step", lambda n, programs, device, steps=steps: steps)
        results.append(layer(x.to(DEVICE, torch.float32)))
    for result in results[1:]:
        assert torch.equal(result, results[0])


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(("path", "segments"), [("triton", 64), ("dense", 2)])
def test_triton_in_lower_precision_matches_float64(triton_basis, dtype, tolerance, path, segments):
    # The same (rounded) weights and inputs in float64 on the gather path: what is left is the rounding of
    # the float32 arithmetic and of the results to the storage type. The dense path also stores its basis
    # values in that type, for the matmul, hence twice the tolerance.
    if path == "dense":
        tolerance *= 2
    x = inputs_inside_and_outside(rows=40, inputs=6).detach().to(dtype)
    ours = layer_on(path, "continuous", 2, segments, inputs=6, outputs=20, dtype=dtype)
    exact = layer_on("gather", "continuous", 2, segments, inputs=6, outputs=20)
    with torch.no_grad():
        exact.weight.copy_(ours.weight)
    for a, b in zip(pass_of(ours, x), pass_of(exact, x, rounding=dtype), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b.to(dtype).double(), rtol=tolerance, atol=tolerance)


def test_triton_leading_dimensions_and_an_empty_batch():
    layer = layer_on("triton", "discontinuous", 2, 8)
    x = torch.rand(2, 5, 3, dtype=torch.float64, device=DEVICE) * 2 - 1
    assert layer(x).shape == (2, 5, 4)
    empty = torch.empty(0, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = layer(empty)
    y.sum().backward()
    assert y.shape == (0, 4) and empty.grad.shape == (0, 3)
    assert torch.count_nonzero(layer.weight.grad) == 0


def test_triton_path_gives_shapes_on_the_meta_device():
    # The ops' fake implementations: what torch.compile traces with.
    layer = HighOrderLinear(3, 4, 2, 64).to("meta")
    layer.path = "triton"
    x = torch.empty(5, 3, device="meta", requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (5, 4) and x.grad.shape == (5, 3) and layer.weight.grad.shape == layer.weight.shape
    x.grad = None
    basis = triton_ops.piecewise_basis(x, 5, 3, 2, 2)  # the dense path's ops
    basis.sum().backward()
    assert basis.shape == (5, 15) and x.grad.shape == (5, 3)


def test_triton_op_passes_gradcheck():
    torch.manual_seed(4)
    weight = torch.randn(2, 5, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    x = (torch.rand(6, 2, dtype=torch.float64, device=DEVICE) * 2.2 - 1.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: triton_ops.piecewise(a, w, 3, 2, 2), (x, weight))


@pytest.mark.parametrize("op", ["piecewise", "piecewise_basis"])
def test_eager_calls_match_the_custom_ops_bit_for_bit(op):
    """The layers call triton_ops.apply_*: outside torch.compile the ops' bodies under a plain
    autograd.Function (layers/eager.py), which must give what the ops give."""
    torch.manual_seed(5)
    x = torch.rand(40, 3, dtype=torch.float64, device=DEVICE) * 2.2 - 1.1
    weight = torch.randn(3, 5, 4, dtype=torch.float64, device=DEVICE)
    tensors, sizes = ((x, weight), (3, 2, 2)) if op == "piecewise" else ((x,), (5, 3, 2, 2))
    results = []
    for function in (getattr(triton_ops, op), getattr(triton_ops, f"apply_{op}")):
        inputs = [t.clone().requires_grad_() for t in tensors]
        y = function(*inputs, *sizes)
        y.backward(torch.ones_like(y))
        results.append([y.detach(), *(t.grad for t in inputs)])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.fixture
def deterministic_mode_kept():
    """Whatever deterministic mode a test sets, the next test starts with the one before it."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the automatic choice of Triton needs CUDA")
def test_cuda_picks_triton_unless_deterministic(deterministic_mode_kept):
    layer = layer_on("auto", "continuous", 2, 64, dtype=torch.float32)  # K = 65: the atomic dL/dW
    repeatable = layer_on("auto", "continuous", 2, 32, dtype=torch.float32)  # K = 33: the dense dL/dW
    x = torch.rand(8, 3, device="cuda")
    assert layer.choose_path(x) == "triton"
    torch.use_deterministic_algorithms(True)
    assert layer.choose_path(x) == "gather"
    assert repeatable.choose_path(x) == "triton"
    torch.use_deterministic_algorithms(True, warn_only=True)  # what training on a GPU runs under
    assert layer.choose_path(x) == "triton"
    with pytest.warns(UserWarning, match="not bit-for-bit repeatable"):
        layer(x.requires_grad_()).sum().backward()


@pytest.mark.parametrize(
    ("mode", "strict"),
    [({"mode": False}, False), ({"mode": True}, True), ({"mode": True, "warn_only": True}, False)],
)
def test_only_strict_deterministic_mode_rules_out_the_atomic_adds(deterministic_mode_kept, mode, strict):
    torch.use_deterministic_algorithms(**mode)
    assert triton_ops.strictly_deterministic() is strict


# Compiles every kernel as a GPU run would, without a GPU: through Triton's IR and PTX to a cubin for sm_90
# (Hopper) with the ptxas that Triton bundles, whose cuobjdump then reads each cubin's registers per thread
# and stack (spilled registers). Type rules and constant folding that the interpreter does not apply are
# checked here.
COMPILE_FOR_SM90 = r"""
import json
import pathlib
import re
import subprocess
import tempfile
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from langinterp.layers import triton_kernels
from langinterp.layers.triton_ops import OUTPUTS_PER_PROGRAM, ROWS_PER_PROGRAM, WARPS, most_inputs_per_step

compiled = []
for storage, compute, n in (("fp32", "fp32", 2), ("bf16", "fp32", 3), ("fp64", "fp64", 5)):
    for name in (
        "forward", "grad_input", "grad_weight", "grad_weight_dense", "dense_basis", "dense_grad_input"
    ):
        kernel = getattr(triton_kernels, name)
        constants = {
            "STRIDE": n - 1, "N": n, "ACC": tl.float64 if compute == "fp64" else tl.float32,
            "BR": ROWS_PER_PROGRAM, "BO": OUTPUTS_PER_PROGRAM,
            "BI": most_inputs_per_step(n),
            "KP": 64,  # the dense dL/dW's widest tile (K <= 64), with its 32 rows
        }
        constants = {arg: value for arg, value in constants.items() if arg in kernel.arg_names}
        signature = {
            arg: "constexpr" if arg in constants else "i32" if arg in triton_kernels.SIZES
            else "*" + (compute if arg in ("nodes_ptr", "inv_ptr", "dw_ptr") else storage)
            for arg in kernel.arg_names
        }
        source = ASTSource(
            fn=kernel, signature=signature,
            constexprs={(kernel.arg_names.index(arg),): value for arg, value in constants.items()},
        )
        binary = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": WARPS})
        cubin = pathlib.Path(tempfile.mkdtemp()) / "kernel.cubin"
        cubin.write_bytes(binary.asm["cubin"])
        usage = subprocess.run(
            [pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump", "--dump-resource-usage",
             cubin], capture_output=True, text=True, check=True,
        ).stdout
        registers, stack = (int(re.search(key + r":(\d+)", usage).group(1)) for key in ("REG", "STACK"))
        compiled.append({"kernel": name, "storage": storage, "n": n, "registers": registers, "stack": stack})
print(json.dumps(compiled))
"""


def test_triton_kernels_compile_for_a_hopper_gpu(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_SM90], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = json.loads(done.stdout)
    assert len(compiled) == 18
    # In float32 and bfloat16 no kernel spills registers to the stack (float64 with n = 5 may).
    assert all(entry["stack"] == 0 for entry in compiled if entry["storage"] != "fp64"), compiled
