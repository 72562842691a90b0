"""The CPU kernel against an earlier version of itself: each pass of both builds, taking turns.

    python benchmarks/kernel_ab.py [--base REV] [--turns N] [--case IN:OUT:N:SEGMENTS ...] [--rows N]
                                   [--out FILE]

On a shared machine whose speed moves by up to 2x between runs, two runs of benchmarks/layers.py cannot
tell a 10% change in the kernel from a change in the load. This script builds langinterp/layers/kernel.cpp
as committed at --base (default HEAD) and as it is in the working tree, loads both into this one process
and, for each case of benchmarks/layers.py on real inputs that takes the kernel (more than
max(floor(1.5n), 3) + 1 weights per link), calls each pass (forward, dL/dW, dL/dx, and both gradients of a
backward pass together: a build's grad_both, or at a base without one its dL/dx then its dL/dW, as the layer
called them then) of the two builds alternately on the same tensors at batch 1024 (--rows: another batch;
below K rows the forward pass and dL/dx take the bucketed passes, as in generation), with one thread and
with all threads; likewise the two
passes of the dense path (the basis matrix, dL/dx from dL/dbasis) for the cases that take it, and the two
passes of the layer over character codes (forward, dL/dW) for its case: the base's passes over codes, or,
at a base without them, its gather passes on the codes' x (what that layer ran then). --case replaces the
kernel's cases by the continuous layers given (for instance 250:250:2:8), and then neither the dense passes
nor the codes' are compared. It reports the median time of each build, the median of the turn-by-turn
ratios (working tree / base: below 1 is faster) and the largest difference between the two builds' results
relative to the largest entry (0 when both compute the same sums in the same order). The dense passes are
compared only when the base's take the reduced basis's ``drop`` argument too (from the commit that added it
on), as the working tree's calls pass it. Prints a table per path; writes JSON {"base": REV, "batch": N,
"rows": [...], "dense_rows": [...], "codes_rows": [...]} to --out (default
benchmarks/results/kernel_ab.json)."""

import argparse
import ctypes
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from layers import BATCH, CASES, median_ratio, save, turns_ms

from langinterp import native
from langinterp.heap import keep_freed_memory
from langinterp.layers import kernel, weights_per_link
from langinterp.layers.piecewise import dense_pays

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("langinterp") / "layers" / "kernel.cpp"
PASSES = ("forward", "grad_weight", "grad_input", "grad_both")
DENSE_PASSES = ("dense_basis", "dense_grad_input")
# The passes of the layer over codes, by the name of the gather pass each replaced.
CODES_PASSES = {"forward": "codes_forward", "grad_weight": "codes_grad_weight"}


def takes_kernel(n: int, segments: int) -> bool:
    """Whether a continuous layer takes the kernel on the layer benchmark's calls, large enough for the
    reduced basis (which is the dense path's matmul on one column fewer, so its passes are the dense ones)."""
    return not dense_pays(weights_per_link("continuous", n, segments) - 1, n, on_kernel=True, reduced=True)


def codes_cases() -> list[tuple[int, int, int, int]]:
    """(in, out, n, segments) of the layer benchmark's layers over character codes."""
    return [case[1:] for case in CASES if case[0] == "input codes"]


def real_cases(dense: bool) -> list[tuple[int, int, int, int]]:
    """(in, out, n, segments) of the layer benchmark's cases on real inputs that take the dense path or the
    reduced basis (dense) or the kernel (not dense)."""
    return [
        (inputs, outputs, n, segments)
        for name, inputs, outputs, n, segments in CASES
        if name != "input codes" and takes_kernel(n, segments) != dense
    ]


def parse_case(text: str) -> tuple[int, int, int, int]:
    """IN:OUT:N:SEGMENTS, a continuous layer that takes the kernel at batch 1024 (``takes_kernel``)."""
    try:
        case = tuple(int(part) for part in text.split(":"))
    except ValueError:
        case = ()
    if len(case) != 4 or min(case) < 1:
        raise argparse.ArgumentTypeError(
            f"expected IN:OUT:N:SEGMENTS, four positive whole numbers, got {text!r}"
        )
    if not takes_kernel(*case[2:]):
        raise argparse.ArgumentTypeError(f"{text!r} takes the dense path, not the kernel: give more segments")
    return case


def source_at(revision: str, folder: Path) -> Path:
    """kernel.cpp as committed at ``revision``, written into ``folder``."""
    shown = subprocess.run(
        ["git", "show", f"{revision}:{SOURCE.as_posix()}"], cwd=ROOT, capture_output=True, check=True
    )
    path = folder / SOURCE.name
    path.write_bytes(shown.stdout)
    return path


def takes_drop(source: Path) -> bool:
    """Whether kernel.cpp at ``source`` has the dense passes' ``drop`` argument (their signature before it
    lacked one, and ctypes cannot tell)."""
    return "int K, int drop" in source.read_text()


def takes_transposed(source: Path) -> bool:
    """Whether kernel.cpp at ``source`` takes x transposed, [in, rows], as its passes did before they
    transposed it themselves (ctypes cannot tell)."""
    return "void forward_##SUFFIX(const T* xt," in source.read_text()


def takes_grad_strides(source: Path) -> bool:
    """Whether kernel.cpp at ``source`` takes dL/dy's strides after the pointers of the passes that read it,
    as it has since they read a broadcast dL/dy in place (ctypes cannot tell)."""
    return "int64_t dy_row" in source.read_text()


def pointers(name: str) -> int:
    """How many pointers an entry point takes first (kernel.SIGNATURES)."""
    return kernel.SIGNATURES[name].count(ctypes.c_void_p)


def grad_passes() -> list[str]:
    """The entry points that read dL/dy and, since then, take its strides (two more int64 arguments)."""
    return [name for name, types in kernel.SIGNATURES.items() if types.count(ctypes.c_int64) == 3]


def without_grad_strides(name: str, items: list | tuple) -> list | tuple:
    """Entry point ``name``'s argument types or arguments without dL/dy's two strides, which follow its
    pointers (as they were before takes_grad_strides); those of any other entry point as they are."""
    if name not in grad_passes():
        return items
    first = pointers(name)
    return items[:first] + items[first + 2 :]


class WithoutGradStrides:
    """A build from before the passes took dL/dy's strides, called as the working tree's is: their two
    stride arguments dropped on the way in (this script's dL/dy is contiguous, as those passes assumed)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library

    def __getattr__(self, name: str):
        function = getattr(self.library, name)
        base = name.rsplit("_", 1)[0]
        if base not in grad_passes():
            return function
        return lambda *arguments: function(*without_grad_strides(base, arguments))


def kernel_pass(library: ctypes.CDLL, transposed: bool) -> Callable[..., torch.Tensor]:
    """kernel.run_pass on ``library``. A build that takes x transposed gets x.t().contiguous() in x's place
    (viewed in x's shape, by which the call sizes its results), made inside the timed call as the layer's
    calls made it then."""

    def run(name: str, x: torch.Tensor, *arguments) -> torch.Tensor:
        if transposed:
            x = x.t().contiguous().view(x.shape)
        return kernel.run_pass(name, x, *arguments, library)

    return run


def backward_pass(library: ctypes.CDLL, transposed: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """(dL/dx, dL/dW) of one backward pass on ``library``: its grad_both, or the two passes one after the
    other in a build without it (``transposed`` as in kernel_pass)."""
    if hasattr(library, "grad_both_f32"):
        return partial(kernel.run_grad_both, library=library)
    run = kernel_pass(library, transposed)

    def both(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, *shape: int):
        return run("grad_input", x, weight, grad, *shape), run("grad_weight", x, weight, grad, *shape)

    return both


def entry_points(source: Path) -> dict[str, list[type]]:
    """kernel.SIGNATURES of the entry points kernel.cpp at ``source`` defines (an older one has fewer, and
    before takes_grad_strides its passes that read dL/dy lack the two strides)."""
    text = source.read_text()
    strided = takes_grad_strides(source)
    return {
        name: types if strided else without_grad_strides(name, types)
        for name, types in kernel.SIGNATURES.items()
        if f"void {name}_##SUFFIX(" in text
    }


def build(source: Path) -> ctypes.CDLL | WithoutGradStrides:
    """``source`` compiled (or taken from the kernel cache) and loaded with its entry points' types; one
    from before takes_grad_strides wrapped to be called as the working tree's is."""
    library = native.bind(source, entry_points(source), instead="nothing")
    if library is None:
        raise SystemExit(f"kernel_ab.py: {source} could not be built (see the warning above)")
    return library if takes_grad_strides(source) else WithoutGradStrides(library)


def has_codes(library: ctypes.CDLL) -> bool:
    """Whether a build has the passes over character codes."""
    return hasattr(library, "codes_forward_f32")


def relative_difference(work: torch.Tensor | tuple, base: torch.Tensor | tuple) -> float:
    """The largest difference between two builds' results relative to the base's largest entry; for a pair
    of results (grad_both's), the larger of the two."""
    if isinstance(base, tuple):
        return max(map(relative_difference, work, base))
    return float((work - base).abs().max() / base.abs().max())


def compare(row: dict, name: str, steps: dict[str, Callable[[], torch.Tensor | tuple]], turns: int) -> None:
    """Pass ``name`` of the two builds (``steps``: base, work) into ``row``: the largest difference of their
    results relative to the largest entry, each build's median time and the median turn-by-turn ratio."""
    base, work = (step() for step in steps.values())
    row[f"{name}_difference"] = relative_difference(work, base)
    times = turns_ms(steps, turns, warmup=2)
    row[f"{name}_base_ms"] = statistics.median(times["base"])
    row[f"{name}_work_ms"] = statistics.median(times["work"])
    row[f"{name}_ratio"] = median_ratio(times["work"], times["base"])


def measure(
    base: ctypes.CDLL,
    work: ctypes.CDLL,
    case: tuple,
    threads: int,
    turns: int,
    dense: bool,
    rows: int = BATCH,
    base_transposed: bool = False,
) -> dict:
    """One case's passes of the two builds; ``base_transposed``: the base takes x transposed."""
    inputs, outputs, n, segments = case
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    K = weights_per_link("continuous", n, segments)
    x = torch.rand(rows, inputs) * 2 - 1
    weight = torch.randn(inputs, K, outputs)
    grad = torch.randn(rows, inputs * K if dense else outputs)
    row = {"in": inputs, "out": outputs, "n": n, "segments": segments, "threads": threads}
    builds = {"base": base, "work": work}
    transposed = {"base": base_transposed, "work": False}
    for name in DENSE_PASSES if dense else PASSES:
        if dense:
            steps = {
                key: partial(kernel.run_dense_pass, name, x, grad, K, n, segments, n - 1, library=library)
                for key, library in builds.items()
            }
        elif name == "grad_both":
            steps = {
                key: partial(backward_pass(library, transposed[key]), x, weight, grad, n, segments, n - 1)
                for key, library in builds.items()
            }
        else:
            steps = {
                key: partial(kernel_pass(library, transposed[key]), name, x, weight, grad, n, segments, n - 1)
                for key, library in builds.items()
            }
        compare(row, name, steps, turns)
    return row


def measure_codes(
    base: ctypes.CDLL,
    work: ctypes.CDLL,
    case: tuple,
    threads: int,
    turns: int,
    rows: int = BATCH,
    base_transposed: bool = False,
) -> dict:
    """The layer over character codes: the working tree's passes over codes against the base's, or against
    the base's gather passes on the codes' x when it has none (``base_transposed``: taking x transposed)."""
    inputs, outputs, n, segments = case
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    K = weights_per_link("continuous", n, segments)
    codes = torch.randint(0, 128, (rows, inputs), dtype=torch.uint8)
    x = (codes.float() + 0.5) / 64 - 1
    weight = torch.randn(inputs, K, outputs)
    grad = torch.randn(rows, outputs)
    row = {"in": inputs, "out": outputs, "n": n, "segments": segments, "threads": threads}
    row["base_passes"] = "codes" if has_codes(base) else "gather"
    for name, codes_name in CODES_PASSES.items():
        on_codes = partial(kernel.run_codes_pass, codes_name, codes, weight, grad, n, segments, n - 1)
        steps = {
            "base": (
                partial(on_codes, library=base)
                if has_codes(base)
                else partial(kernel_pass(base, base_transposed), name, x, weight, grad, n, segments, n - 1)
            ),
            "work": partial(on_codes, library=work),
        }
        compare(row, name, steps, turns)
    return row


def table(rows: list[dict], passes: tuple[str, ...]) -> str:
    header = "| in | out | n | segments | threads |" + "".join(
        f" {name} ms (base) | {name} ratio | {name} difference |" for name in passes
    )
    lines = [header, "|" + "---|" * (5 + 3 * len(passes))]
    for r in rows:
        cells = "".join(
            f" {r[f'{name}_work_ms']:.2f} ({r[f'{name}_base_ms']:.2f}) | {r[f'{name}_ratio']:.2f}"
            f" | {r[f'{name}_difference']:.1e} |"
            for name in passes
        )
        lines.append(f"| {r['in']} | {r['out']} | {r['n']} | {r['segments']} | {r['threads']} |{cells}")
    return "\n".join(lines)


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the git revision to compare the working tree with")
    parser.add_argument("--turns", type=int, default=41, help="timed calls of each build per pass")
    parser.add_argument(
        "--case",
        type=parse_case,
        action="append",
        help="IN:OUT:N:SEGMENTS, a continuous layer to compare instead of the benchmark's (repeatable)",
    )
    parser.add_argument("--rows", type=int, default=BATCH, help="the batch size of every call")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "kernel_ab.json"
    )
    args = parser.parse_args()
    if args.rows < 1:
        parser.error(f"--rows must be at least 1, got {args.rows}")
    with tempfile.TemporaryDirectory() as folder:
        try:
            base_source = source_at(args.base, Path(folder))
        except subprocess.CalledProcessError as error:
            parser.error(f"no kernel.cpp at {args.base!r}: {error.stderr.decode().strip()}")
        base = build(base_source)
        compare_dense = takes_drop(base_source) and not args.case
        transposed = takes_transposed(base_source)
    work = build(ROOT / SOURCE)
    all_threads = torch.get_num_threads()
    thread_counts = sorted({1, all_threads})
    measured = {
        dense: [
            measure(base, work, case, threads, args.turns, dense, rows=args.rows, base_transposed=transposed)
            for case in args.case or real_cases(dense)  # --case leaves out the dense passes
            for threads in thread_counts
        ]
        for dense in (False, True)
        if compare_dense or not dense
    }
    codes_rows = [
        measure_codes(base, work, case, threads, args.turns, rows=args.rows, base_transposed=transposed)
        for case in ([] if args.case else codes_cases())
        for threads in thread_counts
    ]
    torch.set_num_threads(all_threads)
    print(
        f"working tree against {args.base} at batch {args.rows}:"
        " ms of the working tree (of the base), ratio = tree / base"
    )
    print(table(measured[False], PASSES))
    print()
    if compare_dense:
        print("the dense path's passes:")
        print(table(measured[True], DENSE_PASSES))
    elif not args.case:
        print(f"the dense path's passes not compared: at {args.base} they take no drop argument")
    if codes_rows:
        print()
        against = "its passes over codes" if has_codes(base) else "its gather passes on the codes' x"
        print(f"the layer over character codes (the base: {against}):")
        print(table(codes_rows, tuple(CODES_PASSES)))
    payload = {
        "base": args.base,
        "batch": args.rows,
        "rows": measured[False],
        "dense_rows": measured.get(True, []),
        "codes_rows": codes_rows,
    }
    save(args.out, payload)


if __name__ == "__main__":
    main()
