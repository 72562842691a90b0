"""The layers' whole training step against an earlier build of the package, taking turns in one process.

    python benchmarks/step_ab.py [--base REV] [--turns N] [--segments S ...] [--out FILE]

benchmarks/kernel_ab.py compares two builds of the kernel's passes; a change to the Python around them (the
module, the path choice, the autograd.Function, the ctypes calls) escapes it, and two runs of
benchmarks/layers.py cannot tell a few percent from the host's moods. This script copies the package as
committed at --base (default HEAD) into a scratch folder as ``langinterp_base`` (its imports and custom-op
namespace renamed, so both builds load side by side), builds each case of benchmarks/layers.py twice, the
base's layer and the working tree's with the same weights, and times their training steps (forward, sum,
backward, gradients dropped: layers.py's step) in turns, each step right after a step of
nn.Linear(in*n, out) as in layers.py, so that both find the caches as the Linear's step left them. With one
thread and with all threads. Reports the median time of each, the median of the turn-by-turn ratios (working
tree / base: below 1 is faster) and each build's ratio to the Linear's step; writes JSON {"base": REV,
"rows": [...]} to --out (default benchmarks/results/step_ab.json).
"""

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from layers import BATCH, CASES, layer_and_input, markdown, pass_of, save
from torch import nn

from langinterp.heap import keep_freed_memory

ROOT = Path(__file__).resolve().parent.parent
BASE_PACKAGE = "langinterp_base"


def renamed(text: str) -> str:
    """A module of the package with its absolute imports and custom-op namespace pointing at the copy."""
    text = re.sub(r"\b(from|import) langinterp\b", rf"\1 {BASE_PACKAGE}", text)
    return text.replace('"langinterp::', f'"{BASE_PACKAGE}::')


def base_package(revision: str, folder: Path):
    """The package as committed at ``revision``, copied into ``folder`` as BASE_PACKAGE and imported."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "langinterp"], cwd=ROOT, capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / BASE_PACKAGE
    (folder / "langinterp").rename(package)
    for module in package.rglob("*.py"):
        module.write_text(renamed(module.read_text()))
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{BASE_PACKAGE}.layers")


def build(layers, case: tuple):
    """The case's layer from a build's ``layers`` package (continuous; over codes for "input codes")."""
    name, inputs, outputs, n, segments = case
    if name == "input codes":
        return layers.CharacterInput(inputs, outputs, n, segments)
    return layers.HighOrderLinear(inputs, outputs, n, segments)


def measure(base_layers, case: tuple, threads: int, turns: int) -> dict:
    """One row: the case's step in both builds (``base_layers``, the base's layers package), turns each."""
    name, inputs, outputs, n, segments = case
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    work, x = layer_and_input(case, "cpu")  # the working tree's layer, and its input as layers.py makes it
    base = build(base_layers, case)
    base.load_state_dict(work.state_dict())
    hidden = name == "hidden"
    x.requires_grad_(hidden)
    wide = torch.randn(BATCH, inputs * n, requires_grad=hidden)
    linear = pass_of(nn.Linear(inputs * n, outputs, bias=False), wide)
    steps = {"base": pass_of(base, x), "work": pass_of(work, x)}
    for step in (linear, *steps.values()):
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {key: [] for key in ("base", "work", "linear_base", "linear_work")}
    for turn in range(turns):
        for key in ("base", "work") if turn % 2 == 0 else ("work", "base"):
            for label, step in ((f"linear_{key}", linear), (key, steps[key])):
                start = time.perf_counter()
                step()
                times[label].append(1e3 * (time.perf_counter() - start))

    def ratio(top: str, bottom: str) -> float:
        return statistics.median(a / b for a, b in zip(times[top], times[bottom], strict=True))

    return {
        "case": name, "in": inputs, "out": outputs, "n": n, "segments": segments, "threads": threads,
        "base_ms": statistics.median(times["base"]), "work_ms": statistics.median(times["work"]),
        "linear_ms": statistics.median(times["linear_base"] + times["linear_work"]),
        "ratio": ratio("work", "base"),
        "base_vs_linear": ratio("base", "linear_base"), "work_vs_linear": ratio("work", "linear_work"),
    }  # fmt: skip


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the git revision to compare the working tree with")
    parser.add_argument("--turns", type=int, default=1000, help="timed steps of each build per case")
    parser.add_argument("--segments", type=int, nargs="+", help="only the cases with these segment counts")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "step_ab.json"
    )
    args = parser.parse_args()
    if args.turns < 1:
        parser.error(f"--turns must be at least 1, got {args.turns}")
    cases = [case for case in CASES if args.segments is None or case[4] in args.segments]
    if not cases:
        parser.error(f"no case of benchmarks/layers.py has {args.segments} segments")
    all_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        try:
            base_layers = base_package(args.base, Path(folder))
        except subprocess.CalledProcessError as error:
            parser.error(f"no package at {args.base!r}: {error.stderr.decode().strip()}")
        rows = [
            measure(base_layers, case, threads, args.turns)
            for case in cases
            for threads in sorted({1, all_threads})
        ]
    torch.set_num_threads(all_threads)
    header = ["case", "in", "out", "n", "segments", "threads", "tree ms", "base ms", "Linear(in*n) ms"]
    header += ["tree / base", "tree / Linear(in*n)", "base / Linear(in*n)"]
    cells = [
        [r["case"], r["in"], r["out"], r["n"], r["segments"], r["threads"], f"{r['work_ms']:.3f}",
         f"{r['base_ms']:.3f}", f"{r['linear_ms']:.3f}", f"{r['ratio']:.3f}", f"{r['work_vs_linear']:.2f}",
         f"{r['base_vs_linear']:.2f}"]
        for r in rows
    ]  # fmt: skip
    print(f"working tree against {args.base}, training steps at batch {BATCH}, {args.turns} turns:")
    print(markdown(header, cells))
    save(args.out, {"base": args.base, "batch": BATCH, "rows": rows})


if __name__ == "__main__":
    main()
