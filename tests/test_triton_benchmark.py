"""benchmarks/triton_kernels.py: its rows computed in Triton's interpreter on CPU tensors (conftest.py sets
TRITON_INTERPRET=1 without a GPU), its table, and its refusal without a GPU."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu  # exercises CUDA where there is a GPU (tests/conftest.py)

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("triton_benchmark", ROOT / "benchmarks" / "triton_kernels.py")
assert spec is not None and spec.loader is not None
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_rows_time_both_variants_of_each_choice_and_check_them():
    forward = benchmark.forward_row(40, 5, 7, 2, 8, DEVICE)
    assert forward["same_bits"] is True and forward["programs"] == 2 * 1
    assert all(forward[key] > 0 for key in ("inputs_per_step_1_ms", "inputs_per_step_4_ms", "matmul_ms"))
    grad_weight = benchmark.grad_weight_row(40, 5, 7, 3, 8, DEVICE)
    assert grad_weight["K"] == 17
    # float32 against float64: both kernels round like float32 sums of 40 terms.
    assert grad_weight["atomic_error"] < 1e-5 and grad_weight["dense_error"] < 1e-5
    # The limit is restored after each forced choice.
    assert benchmark.triton_ops.DENSE_GRAD_WEIGHT_MAX_K == 64
    table = benchmark.tables([forward], [grad_weight])
    assert "| 40 | 5 | 7 | 2 | 8 | 2 |" in table and "| 40 | 5 | 7 | 3 | 8 | 17 |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "triton_kernels.py"), "--out", str(tmp_path / "t.json")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: benchmarks/triton_kernels.py needs a CUDA GPU, and torch sees none"
    assert not (tmp_path / "t.json").exists()
