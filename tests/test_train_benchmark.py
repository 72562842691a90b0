"""benchmarks/train.py --quick through its command line: the rows it writes (nothing timed is checked, only
what the rows say)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_writes_every_row_with_its_ratio_to_the_plain_mlp(tmp_path):
    out = tmp_path / "train.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["model"]: row for row in json.loads(out.read_text())["rows"]}
    ours, plain = rows["sparse_mlp (langinterp)"], rows["plain MLP, same matmuls"]
    assert (ours["batch"], plain["batch"], plain["ratio"]) == (1000, 1000, 1.0)
    assert ours["step_ms"] > 0 and ours["ratio"] > 0
    reduced = rows["sparse_mlp on the reduced basis"]  # the same model, its piecewise layers on reduced.py
    assert reduced["batch"] == 1000 and reduced["step_ms"] > 0 and reduced["ratio"] > 0
    assert ours["chars_per_s"] == 1000 / ours["step_ms"] * 1000
    assert rows["sparse_mlp generate"]["ratio"] is None
    hol = rows.get("high-order-layers-torch")  # present where the package is installed, as in CI
    assert hol is None or hol["ratio"] == hol["step_ms"] / plain["step_ms"]
    assert f"| sparse_mlp (langinterp) | 1000 | {ours['step_ms']:.2f} |" in done.stdout
