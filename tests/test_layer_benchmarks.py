"""benchmarks/paths.py, benchmarks/kernel_ab.py, benchmarks/step_ab.py, benchmarks/dispatch.py,
benchmarks/threads.py and benchmarks/layers.py's forced paths: their rows on tiny layers (nothing timed is
checked, only what the rows say), their refusals, and layers.py's profiling."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from langinterp.layers import HighOrderLinear, kernel, weights_per_link
from langinterp.layers.basis import locate
from langinterp.layers.piecewise import dense_pays

ROOT = Path(__file__).resolve().parent.parent
needs_kernel = pytest.mark.skipif(not kernel.available(), reason="needs the compiled CPU kernel")


def load(name: str) -> ModuleType:
    """A benchmark script as a module; paths.py imports its helpers from layers.py beside it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


paths = load("paths")
layers = load("layers")
kernel_ab = load("kernel_ab")
step_ab = load("step_ab")
dispatch = load("dispatch")
threads = load("threads")
spread = load("spread")


@needs_kernel
@pytest.mark.parametrize(
    ("kind", "n", "segments"),
    [("continuous", 2, 2), ("continuous", 2, 3), ("continuous", 2, 4), ("discontinuous", 2, 2)],
)
def test_paths_row_reports_each_path_and_the_automatic_choice(kind, n, segments):
    threads = torch.get_num_threads()
    row = paths.measure(kind, n, segments, threads=1, repeats=1, width=128)
    assert (row["width"], row["batch"]) == (128, 1024)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    K = weights_per_link(kind, n, segments)
    assert row["K"] == K and row["threads"] == 1
    kinks = kind == "continuous" and n == 2  # the layers that can take the kink basis
    timed = [path for path in paths.PATHS if path != "kinks" or kinks]
    assert row["linear_ms"] > 0 and all(
        row[f"{path}_{unit}"] > 0 for path in timed for unit in ("ms", "ratio")
    )
    assert (row["kinks_ratio"] is None) == (not kinks)
    assert row["faster"] == min(timed, key=lambda path: row[f"{path}_ratio"])
    # Batch 1024, 128 inputs and outputs: 2^24 multiply-adds per column, enough for the reduced basis, and
    # enough rows and inputs for the kink basis.
    dense = "kinks" if kinks and segments <= 2 else "reduced"
    assert row["auto"] == (dense if dense_pays(K - 1, n, on_kernel=True, reduced=True) else "kernel")
    shown = paths.table([row])
    ratios = " | ".join(
        "-" if row[f"{path}_ratio"] is None else f"{row[f'{path}_ratio']:.2f}" for path in paths.PATHS
    )
    assert (
        f"| {kind} | {n} | {segments} | {K} | {K / n:.2f} | 1 | {row['linear_ms']:.2f} | {ratios} |" in shown
    )


@needs_kernel
def test_paths_takes_its_cases_from_the_command_line(tmp_path):
    assert paths.parse_case("continuous:5:2") == ("continuous", 5, 2)
    for bad in ("continuous:5", "spline:2:2", "continuous:1:2", "continuous:two:2"):
        with pytest.raises(argparse.ArgumentTypeError):
            paths.parse_case(bad)
    assert "a continuous layer needs n >= 2" in refusal(tmp_path, "paths.py", "--case", "continuous:1:2")
    threads = torch.get_num_threads()
    row = paths.measure("continuous", 2, 3, threads=1, repeats=1, width=16, batch=8)
    torch.set_num_threads(threads)
    assert (row["width"], row["batch"], row["auto"]) == (16, 8, "dense")  # too small for reduced or kinks
    # 2^24 multiply-adds per column: enough for the reduced basis in training, not in inference (2^26).
    trained = paths.measure("continuous", 3, 2, threads=1, repeats=1, width=128, batch=1024)
    inferred = paths.measure("continuous", 3, 2, threads=1, repeats=1, width=128, batch=1024, inference=True)
    torch.set_num_threads(threads)
    assert (trained["inference"], trained["auto"]) == (False, "reduced")
    assert (inferred["inference"], inferred["auto"]) == (True, "dense")
    assert inferred["reduced_ms"] > 0 and inferred["kinks_ratio"] is None


def test_every_paths_case_is_a_valid_layer():
    for kind, n, segments in paths.CASES:
        assert HighOrderLinear(1, 1, n, segments, kind=kind).weights_per_link >= n


def test_forced_path_reaches_the_layer_and_the_row():
    case = ("hidden", 5, 4, 2, 4)
    layer, x = layers.layer_and_input(case, "cpu", "gather")
    assert layer.path == "gather" and layers.path_taken(layer, x) == "gather"
    layer, x = layers.layer_and_input(case, "cpu")
    assert layers.path_taken(layer, x) == layer.choose_path(x)
    codes, x = layers.layer_and_input(("input codes", 5, 4, 2, 128), "cpu")
    assert layers.path_taken(codes, x) == "codes"
    with pytest.raises(ValueError, match="no path to force"):
        layers.layer_and_input(("input codes", 5, 4, 2, 128), "cpu", "dense")


def test_forced_paths_choose_their_cases_and_refuse_what_cannot_run():
    assert all(case[0] != "input codes" for case in layers.chosen_cases(None, "dense"))
    assert [case[4] for case in layers.chosen_cases([2], "auto")] == [2, 2]
    assert layers.chosen_cases(None, "auto") == layers.CASES
    kinks = layers.chosen_cases(None, "kinks")  # the continuous layers with n = 2 only
    assert [case[3:] for case in kinks] == [(2, 128), (2, 2), (2, 32), (2, 128)]
    assert layers.path_problem("triton", "cpu") == "--path triton needs --device cuda and Triton"
    assert layers.path_problem("kernel", "cuda") is not None
    assert (
        layers.path_problem("reduced", "cuda")
        == "--path reduced needs --device cpu and the compiled CPU kernel"
    )
    assert layers.path_problem("dense", "cpu") is None and layers.path_problem("auto", "cuda") is None


def refusal(tmp_path: Path, script: str, *args: str) -> str:
    """Run a benchmark script that must refuse its arguments: exit status 2, no JSON; its last error line."""
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / script, *args, "--out", out], capture_output=True, text=True
    )
    assert done.returncode == 2 and not out.exists()
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["hidden", "input codes"])
def test_layers_benchmark_times_each_pass_and_both_gradients(name):
    threads = torch.get_num_threads()
    row = layers.measure_passes((name, 5, 4, 2, 8), threads=1, quick=True)
    torch.set_num_threads(threads)
    keys = ("forward", "grad_input", "grad_weight", "grad_both")
    assert all(row[f"linear_{key}_ms"] > 0 for key in keys)
    codes = name == "input codes"  # integer codes: no dL/dx, so no backward pass with both gradients
    assert all((row[f"{key}_ms"] is None) == (codes and key in ("grad_input", "grad_both")) for key in keys)
    shown = layers.passes_table([row])
    assert "| both ms (Linear) |" in shown and "| both / Linear" in shown
    assert f"| {row['grad_weight_ms'] / row['linear_grad_weight_ms']:.2f} |" in shown


def test_layers_benchmark_refuses_a_forced_path_it_cannot_run(tmp_path):
    last = refusal(tmp_path, "layers.py", "--path", "triton")
    assert last == "layers.py: error: --path triton needs --device cuda and Triton"


@needs_kernel
@pytest.mark.parametrize("dense", [False, True])
def test_kernel_ab_compares_two_builds_pass_by_pass(dense):
    work = kernel_ab.build(ROOT / kernel_ab.SOURCE)
    threads = torch.get_num_threads()
    case = (5, 20, 2, 2) if dense else (5, 20, 2, 8)
    row = kernel_ab.measure(work, work, case, threads=1, turns=1, dense=dense, rows=40)
    torch.set_num_threads(threads)
    passes = kernel_ab.DENSE_PASSES if dense else kernel_ab.PASSES
    for name in passes:
        # One build against itself: the same sums in the same order.
        assert row[f"{name}_difference"] == 0
        assert row[f"{name}_base_ms"] > 0 and row[f"{name}_work_ms"] > 0 and row[f"{name}_ratio"] > 0
    shown = kernel_ab.table([row], passes)
    assert f"| 5 | 20 | 2 | {case[3]} | 1 |" in shown and f" {passes[-1]} ratio |" in shown


class Without:
    """A build as one from before some entry points (those whose names start with ``prefix``) looked: the
    same entry points but those."""

    def __init__(self, library, prefix: str):
        self.library, self.prefix = library, prefix

    def __getattr__(self, name):
        if name.startswith(self.prefix):
            raise AttributeError(name)
        return getattr(self.library, name)


@needs_kernel
def test_kernel_ab_compares_both_gradients_with_a_base_that_has_no_joint_pass():
    work = kernel_ab.build(ROOT / kernel_ab.SOURCE)
    threads = torch.get_num_threads()
    case = (5, 37, 2, 128)  # n = 2: the working tree's grad_both takes dL/dx in dL/dW's pass
    older_build = Without(work, "grad_both")
    same = kernel_ab.measure(work, work, case, threads=1, turns=1, dense=False, rows=300)
    older = kernel_ab.measure(older_build, work, case, threads=1, turns=1, dense=False, rows=300)
    torch.set_num_threads(threads)
    assert same["grad_both_difference"] == 0
    # The base's dL/dx then dL/dW: dL/dW the same bits, dL/dx's sums reduced in another order.
    assert 0 < older["grad_both_difference"] < 1e-5
    assert older["grad_both_base_ms"] > 0 and older["grad_both_ratio"] > 0


@needs_kernel
def test_kernel_ab_compares_the_layer_over_codes_with_either_kind_of_base():
    work = kernel_ab.build(ROOT / kernel_ab.SOURCE)
    threads = torch.get_num_threads()
    case = (5, 20, 2, 128)
    same = kernel_ab.measure_codes(work, work, case, threads=1, turns=1, rows=300)
    older = kernel_ab.measure_codes(Without(work, "codes_"), work, case, threads=1, turns=1, rows=300)
    torch.set_num_threads(threads)
    assert (same["base_passes"], older["base_passes"]) == ("codes", "gather")
    for name in kernel_ab.CODES_PASSES:
        assert same[f"{name}_difference"] == 0
        # The gather passes on the codes' x: the same function, summed in another order.
        assert 0 <= older[f"{name}_difference"] < 1e-5
        assert older[f"{name}_base_ms"] > 0 and older[f"{name}_work_ms"] > 0 and older[f"{name}_ratio"] > 0
    assert kernel_ab.codes_cases() == [(16, 250, 2, 128)]


def test_kernel_ab_binds_only_the_entry_points_a_build_has(tmp_path):
    assert set(kernel_ab.entry_points(ROOT / kernel_ab.SOURCE)) == set(kernel.SIGNATURES)
    older = tmp_path / "older.cpp"
    older.write_text("void forward_##SUFFIX(const T* xt) {}\nvoid grad_weight_##SUFFIX(const T* xt) {}")
    assert set(kernel_ab.entry_points(older)) == {"forward", "grad_weight"}


def test_kernel_ab_calls_a_base_from_before_the_grad_strides_without_them(tmp_path):
    assert kernel_ab.takes_grad_strides(ROOT / kernel_ab.SOURCE)
    older = tmp_path / "older.cpp"
    older.write_text("void forward_##SUFFIX(const T* x) {}\nvoid grad_weight_##SUFFIX(const T* x) {}")
    assert not kernel_ab.takes_grad_strides(older)
    bound = kernel_ab.entry_points(older)
    assert bound["forward"] == kernel.SIGNATURES["forward"]
    assert bound["grad_weight"] == kernel.SIGNATURES["grad_weight"][:3] + kernel.SIGNATURES["grad_weight"][5:]
    calls = []

    class Library:
        def forward_f32(self, *arguments):
            calls.append(arguments)

        def grad_weight_f32(self, *arguments):
            calls.append(arguments)

    wrapped = kernel_ab.WithoutGradStrides(Library())
    wrapped.forward_f32(1, 2, 3, 1024, 16)
    wrapped.grad_weight_f32(1, 2, 3, 250, 1, 1024, 16)
    assert calls == [(1, 2, 3, 1024, 16), (1, 2, 3, 1024, 16)]
    assert set(kernel_ab.grad_passes()) == {"grad_weight", "grad_input", "grad_both", "codes_grad_weight"}


def test_kernel_ab_takes_each_paths_cases_and_the_committed_source(tmp_path):
    on_kernel = [(16, 250, 2, 128), (250, 250, 3, 8), (250, 250, 5, 2), (250, 250, 2, 32), (128, 128, 2, 128)]
    assert kernel_ab.real_cases(dense=False) == on_kernel
    assert kernel_ab.real_cases(dense=True) == [(250, 250, 2, 2)]
    committed = subprocess.run(
        ["git", "show", "HEAD:langinterp/layers/kernel.cpp"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    assert kernel_ab.source_at("HEAD", tmp_path).read_bytes() == committed
    assert kernel_ab.takes_drop(ROOT / kernel_ab.SOURCE)  # the working tree's dense passes
    before = tmp_path / "before.cpp"  # the signature before the reduced basis
    before.write_text(
        "void dense_basis(const T* x, T* basis, int64_t rows, int I, int n, int s, int stride, int K) {"
    )
    assert not kernel_ab.takes_drop(before)


def test_kernel_ab_takes_kernel_cases_from_the_command_line(tmp_path):
    assert kernel_ab.parse_case("250:250:2:8") == (250, 250, 2, 8)
    for text, reason in [
        ("250:250:2", "four positive whole numbers"),
        ("250:250:x:8", "four positive whole numbers"),
        ("250:0:2:8", "four positive whole numbers"),
        ("250:250:2:2", "takes the dense path"),  # 3 weights per link: the dense path's
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            kernel_ab.parse_case(text)
    last = refusal(tmp_path, "kernel_ab.py", "--case", "250:250:2:2")
    assert last.startswith("kernel_ab.py: error: argument --case: '250:250:2:2' takes the dense path")


def test_kernel_ab_refuses_an_unknown_revision(tmp_path):
    last = refusal(tmp_path, "kernel_ab.py", "--base", "no-such-rev")
    assert last.startswith("kernel_ab.py: error: no kernel.cpp at 'no-such-rev'")


def test_kernel_ab_refuses_a_batch_below_one(tmp_path):
    last = refusal(tmp_path, "kernel_ab.py", "--rows", "0")
    assert last == "kernel_ab.py: error: --rows must be at least 1, got 0"


@needs_kernel
def test_kernel_ab_runs_at_the_batch_it_is_given(tmp_path):
    out = tmp_path / "ab.json"
    arguments = ["--case", "5:20:3:8", "--rows", "3", "--turns", "1", "--out", out]
    done = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "kernel_ab.py", *arguments],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "against HEAD at batch 3:" in done.stdout
    result = json.loads(out.read_text())
    assert result["batch"] == 3 and result["dense_rows"] == [] and result["codes_rows"] == []
    assert result["rows"] and all(
        (row["in"], row["out"], row["n"], row["segments"]) == (5, 20, 3, 8) and row[f"{name}_ratio"] > 0
        for row in result["rows"]
        for name in kernel_ab.PASSES
    )


def test_layers_benchmark_measures_peak_memory_without_profiler_log_lines():
    """peak_mib runs the torch profiler once per case, whose log lines would otherwise bury the tables."""
    code = "import layers, torch; print(layers.peak_mib(lambda: torch.ones(2**18)))"
    env = {key: value for key, value in os.environ.items() if key != "KINETO_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(1.0)  # 2**18 float32 values: one MiB
    assert "profiler_start" not in done.stderr


@needs_kernel
@pytest.mark.parametrize(
    ("case", "path"), [(("input codes", 3, 5, 2, 128), "codes"), (("hidden", 4, 5, 3, 8), "kernel")]
)
def test_dispatch_row_times_both_routes_against_the_linear(case, path):
    threads = torch.get_num_threads()
    row = dispatch.measure(case, threads=1, quick=True, device="cpu")
    torch.set_num_threads(threads)
    assert (row["case"], row["in"], row["out"], row["n"], row["segments"]) == case
    assert row["threads"] == 1 and row["path"] == path
    assert all(row[key] > 0 for key in ("eager_ms", "ops_ms", "linear_in_n_ms", "eager_over_ops"))
    assert all(row[key] > 0 for key in ("kernel_ms", "kernel_over_linear", "eager_over_kernel"))
    assert f"| {path} |" in dispatch.table([row])


def test_dispatch_times_no_kernel_alone_where_the_layer_runs_none():
    threads = torch.get_num_threads()
    row = dispatch.measure(("hidden", 4, 5, 2, 2), threads=1, quick=True, device="cpu")
    torch.set_num_threads(threads)
    assert row["path"] not in ("kernel", "codes")
    assert row["kernel_ms"] is None and row["kernel_over_linear"] is None and row["eager_over_kernel"] is None
    assert dispatch.table([row]).rstrip().endswith("| - | - | - |")


@needs_kernel
@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_kernel_alone_runs_the_passes_of_the_layers_step(monkeypatch, x_needs_grad):
    layer = HighOrderLinear(3, 5, 2, 8)
    x = (torch.rand(16, 3) * 2 - 1).requires_grad_(x_needs_grad)
    called = []
    for name in ("run_pass", "run_grad_both"):
        original = getattr(dispatch.kernel, name)

        def spy(*args, original=original, name=name):
            called.append(args[0] if name == "run_pass" else "grad_both")
            return original(*args)

        monkeypatch.setattr(dispatch.kernel, name, spy)
    dispatch.kernel_passes(layer, x, "kernel")()
    assert called == ["forward", "grad_both" if x_needs_grad else "grad_weight"]


def test_threads_timeline_has_a_row_per_second_and_restores_the_thread_count():
    before = torch.get_num_threads()
    rows = threads.timeline(2)
    assert torch.get_num_threads() == before
    assert [row["second"] for row in rows] == [0, 1]
    assert all(row["threads"] == before for row in rows)
    assert all(row[key] > 0 for row in rows for key in ("ours_1_ms", "ours_all_ms", "linear_all_ms"))


def test_threads_benchmark_refuses_less_than_a_second(tmp_path):
    last = refusal(tmp_path, "threads.py", "--seconds", "0")
    assert last == "threads.py: error: --seconds must be at least 1"


def test_heap_benchmark_refuses_fewer_than_one_process(tmp_path):
    last = refusal(tmp_path, "heap.py", "--processes", "0")
    assert last == "heap.py: error: --processes and --turns must be at least 1"


@pytest.mark.parametrize("segments", [1, 2, 3, 8, 128])
def test_spread_batches_sort_each_column_or_put_every_value_in_one_segment(segments):
    torch.manual_seed(0)
    x = torch.rand(256, 5) * 2 - 1
    batches = spread.spread_inputs(x, segments)
    assert batches["uniform"] is x
    ordered = batches["sorted"]
    assert (ordered.diff(dim=0) >= 0).all()
    assert all(set(ordered[:, i].tolist()) == set(x[:, i].tolist()) for i in range(5))
    one = batches["one_segment"]
    assert one.shape == x.shape and one.dtype == x.dtype and one.unique().numel() > 1
    assert (locate(one, segments)[0] == segments // 2).all()


@needs_kernel
@pytest.mark.parametrize("name", ["hidden", "input real"])
def test_spread_times_the_forward_pass_and_the_step_on_each_spread(name):
    before = torch.get_num_threads()
    row = spread.measure((name, 5, 4, 2, 16), threads=1, quick=True)
    torch.set_num_threads(before)
    assert row["path"] == "kernel"
    for kind in ("forward", "step"):
        assert all(row[f"{key}_{kind}_ms"] > 0 for key in spread.SPREADS)
        assert all(row[f"{key}_{kind}_ratio"] > 0 for key in spread.SPREADS[1:])
        assert f"uniform_{kind}_ratio" not in row
    shown = spread.table([row])
    assert "| forward: one segment / uniform |" in shown
    assert f"| {row['sorted_step_ratio']:.2f} |" in shown


def test_spread_benchmark_refuses_segments_of_no_real_valued_case(tmp_path):
    last = refusal(tmp_path, "spread.py", "--segments", "5")
    assert last == "spread.py: error: no real-valued case has those segment counts"


def test_step_ab_renames_the_copy_of_the_package_and_nothing_else():
    text = (
        "from langinterp.layers import kernel\nimport langinterp.text\nfrom langinterp_extra import x\n"
        'APP_NAME = "langinterp"\nop = "langinterp::piecewise"\n'
    )
    assert step_ab.renamed(text) == (
        "from langinterp_base.layers import kernel\nimport langinterp_base.text\n"
        "from langinterp_extra import x\n"
        'APP_NAME = "langinterp"\nop = "langinterp_base::piecewise"\n'
    )


@needs_kernel
def test_step_ab_times_the_committed_layers_beside_the_working_trees(tmp_path):
    base = step_ab.base_package("HEAD", tmp_path)
    case = ("input real", 5, 4, 2, 16)
    committed, (tree, x) = step_ab.build(base, case), step_ab.layer_and_input(case, "cpu")
    assert type(committed) is not type(tree) and type(committed).__module__.startswith("langinterp_base.")
    committed.load_state_dict(tree.state_dict())
    torch.testing.assert_close(committed(x), tree(x))
    before = torch.get_num_threads()
    row = step_ab.measure(base, case, threads=1, turns=2)
    torch.set_num_threads(before)
    assert row["case"] == "input real" and row["threads"] == 1
    assert all(row[key] > 0 for key in ("base_ms", "work_ms", "linear_ms", "ratio", "base_vs_linear"))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--base", "no-such-rev"], "step_ab.py: error: no package at 'no-such-rev'"),
        (["--turns", "0"], "step_ab.py: error: --turns must be at least 1, got 0"),
        (["--segments", "7"], "step_ab.py: error: no case of benchmarks/layers.py has [7] segments"),
    ],
)
def test_step_ab_refuses_what_it_cannot_compare(tmp_path, arguments, expected):
    assert refusal(tmp_path, "step_ab.py", *arguments).startswith(expected)
