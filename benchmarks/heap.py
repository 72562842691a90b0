"""Training steps with glibc's default heap settings against langinterp.heap.keep_freed_memory().

    python benchmarks/heap.py [--processes N] [--turns N] [--quick] [--out FILE]

Whether glibc hands the top of its heap back to the OS after a step, to fault it in again page by page in
the next, depends on where each buffer landed, so it differs from process to process. This script therefore
starts --processes fresh processes of each setting, alternating (default, kept, default, kept, ...), and in
each one times the forward+backward pass of benchmarks/layers.py's cases with 128 segments (the two input
layers and the 128-wide hidden layer: the largest tables) against nn.Linear(in*n, out), taking turns as
layers.py does, with one thread and with all threads, counting the process's page faults (minor faults, by
getrusage) over the timed turns. Prints one row per process and case and a summary per setting; writes JSON
{"rows": [...]} to --out (default benchmarks/results/heap.json).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from layers import markdown, save
from torch import nn

SETTINGS = ("default", "kept")


def measure_process(setting: str, turns: int) -> list[dict]:
    """This process's rows, under ``setting`` (applied before the first tensor is allocated)."""
    if setting == "kept":
        from langinterp.heap import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("this malloc is not glibc's: there is nothing to compare")
    from layers import BATCH, CASES, layer_and_input, median_ratio, pass_of, turns_ms

    rows = []
    all_threads = torch.get_num_threads()
    for case in (c for c in CASES if c[4] == 128):
        name, inputs, outputs, n, segments = case
        for threads in sorted({1, all_threads}):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            hidden = name == "hidden"
            layer, x = layer_and_input(case, "cpu")
            x.requires_grad_(hidden and x.is_floating_point())
            linear = nn.Linear(inputs * n, outputs, bias=False)
            wide = torch.randn(BATCH, inputs * n, requires_grad=hidden)
            steps = {"ours": pass_of(layer, x), "linear": pass_of(linear, wide)}
            turns_ms(steps, 1, warmup=10)  # first touches of new memory are not what is counted
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times = turns_ms(steps, turns, warmup=0)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            rows.append(
                {
                    "setting": setting,
                    "case": name,
                    "segments": segments,
                    "threads": threads,
                    "ours_ms": statistics.median(times["ours"]),
                    "linear_ms": statistics.median(times["linear"]),
                    "ratio": median_ratio(times["ours"], times["linear"]),
                    "faults_per_turn": faults / turns,
                }
            )
    torch.set_num_threads(all_threads)
    return rows


def run_processes(processes: int, turns: int) -> list[dict]:
    """Rows of ``processes`` fresh processes per setting, alternating settings, tagged with their number."""
    rows = []
    for number in range(processes):
        for setting in SETTINGS:
            done = subprocess.run(
                [sys.executable, __file__, "--child", setting, "--turns", str(turns)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows += [{**row, "process": number} for row in json.loads(done.stdout)]
    return rows


def table(rows: list[dict]) -> str:
    header = ["setting", "process", "case", "threads", "ours ms", "Linear(in*n) ms", "ours / Linear(in*n)"]

    def row(r: dict) -> list:
        times = [f"{r['ours_ms']:.2f}", f"{r['linear_ms']:.2f}", f"{r['ratio']:.2f}"]
        return [r["setting"], r["process"], r["case"], r["threads"], *times, f"{r['faults_per_turn']:.0f}"]

    return markdown([*header, "page faults per turn"], [row(r) for r in rows])


def summary(rows: list[dict]) -> str:
    """Per setting, case and thread count: the range of the ratio and of the faults over the processes."""
    keys = dict.fromkeys((r["setting"], r["case"], r["threads"]) for r in rows)
    lines = []
    for setting, case, threads in sorted(keys, key=lambda k: SETTINGS.index(k[0])):
        group = [r for r in rows if (r["setting"], r["case"], r["threads"]) == (setting, case, threads)]
        ratios = [r["ratio"] for r in group]
        faults = [r["faults_per_turn"] for r in group]
        spans = [f"{min(ratios):.2f}-{max(ratios):.2f}", f"{min(faults):.0f}-{max(faults):.0f}"]
        lines.append([setting, case, threads, *spans])
    return markdown(["setting", "case", "threads", "ours / Linear(in*n)", "page faults per turn"], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=6, help="fresh processes per setting")
    parser.add_argument("--turns", type=int, default=40, help="timed turns per case in each process")
    parser.add_argument("--quick", action="store_true", help="one process per setting, 5 turns")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "heap.json")
    args = parser.parse_args()
    if args.processes < 1 or args.turns < 1:
        parser.error("--processes and --turns must be at least 1")
    if args.child:
        print(json.dumps(measure_process(args.child, args.turns)))
        return
    processes, turns = (1, 5) if args.quick else (args.processes, args.turns)
    rows = run_processes(processes, turns)
    print(table(rows))
    print()
    print(summary(rows))
    save(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
