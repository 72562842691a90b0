#!/usr/bin/env bash
# The checks that need a GPU, in one run of under ten minutes, for a machine with CUDA and PyTorch on it
# (as the development workplace's device machine is: run it there from the repository's root).
#
#   bash scripts/gpu_checks.sh
#
# 1. The tests that skip without CUDA, and their neighbours: the layers' Triton kernels compiled for the GPU
#    (tests/test_triton.py runs them in Triton's interpreter only where there is no GPU), the layers' CUDA
#    and bf16-autocast cases, Mamba's scans on CUDA (mamba-ssm's kernel when it is installed).
# 2. benchmarks/layers.py --device cuda --passes (the layers' Triton path against cuBLAS), the same for the
#    2-segment cases forced onto the Triton path (on CUDA they take the dense path: would Triton be faster?)
#    and for the many-segment cases forced onto the dense path (a basis matrix K/n times a Linear's input,
#    but cuBLAS: at batch 1024, is it faster than the Triton kernels, and up to which K?), and for the
#    2-segment n = 2 case on the kink basis (on CUDA it keeps the Triton dense path: would kinks be faster?),
#    then benchmarks/triton_kernels.py (the kernels' variants alone).
# 3. Every neural family trained on CUDA as `langinterp train` runs it there (bf16-mixed), unchanged but for
#    a local book and a few steps, then `generate` and `evaluate` on the run; `recipes/mamba.toml` a second
#    time with mamba-ssm's import blocked when it is installed (the pure-PyTorch scan on CUDA); the automaton.
#    A recipe is skipped, and says so, when less than 90 s of the run's budget ($GPU_CHECKS_SECONDS) is left.
# 4. With the time left, the whole test suite with the GPU visible (its training pins the CPU, but generation
#    and evaluation of what it trains then run on CUDA).
# Logs and the benchmarks' JSON go to $OUT when it is set (the device tool's folder: at most 8 files come
# back from it, so the dense-path and kink runs' JSON stays in /tmp; their tables are in the log), else
# gpu-checks/.
#
# Python packages the machine lacks can be carried as wheels in .whl/ (see the device tool's notes); they
# are installed into /tmp/site first. Every step runs even when one before it fails; the exit status says
# whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
budget=${GPU_CHECKS_SECONDS:-540}
mkdir -p "$out"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 LANGINTERP_HOME=/tmp/langinterp-gpu-checks
status=0
langinterp=("$python" -m langinterp)
step() {  # step LOG SECONDS NAME COMMAND...: run COMMAND under a time limit, its output appended to $out/LOG
    local log=$out/$1 limit=$2 name=$3
    shift 3
    echo "=== $name" >>"$log"
    if timeout "$limit" "$@" >>"$log" 2>&1; then
        echo "=== $name: passed" | tee -a "$log"
    else
        echo "=== $name: FAILED ($?)" | tee -a "$log"
        tail -n 15 "$log"
        status=1
    fi
}

"$python" - <<'PY' 2>&1 | tee "$out/tests.log" || exit 1  # the environment heads the tests' log
import importlib.util, os, torch
assert torch.cuda.is_available(), "no CUDA device: these checks need one"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(), "with", os.cpu_count(), "CPUs")
for name in ("triton", "mamba_ssm", "pytorch_lightning", "lion_pytorch", "platformdirs", "tomli_w", "lightgbm",
             "high_order_layers_torch", "xdist", "pytest_timeout"):
    print(name, "yes" if importlib.util.find_spec(name) else "MISSING")
PY
workers=()
"$python" -c "import xdist" 2>/dev/null && workers=(-n 8)

step tests.log 240 "GPU tests" "$python" -m pytest -q -p no:cacheprovider "${workers[@]}" tests/test_triton.py \
    tests/test_triton_benchmark.py tests/test_layers.py tests/test_mamba.py tests/test_scan.py tests/test_devices.py
tail -n 3 "$out/tests.log"

step layers_cuda.log 150 "layer benchmark" "$python" benchmarks/layers.py --device cuda --passes \
    --out "$out/layers_cuda.json"
tail -n 22 "$out/layers_cuda.log"
step layers_cuda.log 90 "layer benchmark, 2 segments on the Triton path" "$python" benchmarks/layers.py \
    --device cuda --passes --quick --path triton --segments 2 --out "$out/layers_cuda_triton.json"
tail -n 10 "$out/layers_cuda.log"
step layers_cuda.log 90 "layer benchmark, many segments on the dense path" "$python" benchmarks/layers.py \
    --device cuda --passes --quick --path dense --segments 8 32 128 --out /tmp/layers_cuda_dense.json
tail -n 12 "$out/layers_cuda.log"
step layers_cuda.log 60 "layer benchmark, 2 segments on the kink basis" "$python" benchmarks/layers.py \
    --device cuda --passes --quick --path kinks --segments 2 --out /tmp/layers_cuda_kinks.json
tail -n 8 "$out/layers_cuda.log"
step triton_kernels.log 150 "Triton kernel benchmark" "$python" benchmarks/triton_kernels.py \
    --out "$out/triton_kernels.json"
tail -n 26 "$out/triton_kernels.log"

book='data.books=["README.md"]'
declare -A extra=([conv]="data.holdout=0.3")  # its 10 000-character window needs a longer held-out tail
for recipe in mamba sparse_mlp transformer high_order_input_transformer conv tail_focus mamba_high_order gpt; do
    if [ $((budget - SECONDS)) -lt 90 ]; then
        echo "=== no time left to train $recipe" | tee -a "$out/train.log"
        continue
    fi
    step train.log 120 "train $recipe" "${langinterp[@]}" train "recipes/$recipe.toml" "$book" ${extra[$recipe]:-} \
        trainer.max_steps=30 --run-name "gpu-$recipe" --quiet
    step train.log 60 "generate $recipe" "${langinterp[@]}" generate --run "gpu-$recipe" --prompt "Who are you?" \
        -n 60 --seed 1
    step train.log 60 "evaluate $recipe" "${langinterp[@]}" evaluate --run "gpu-$recipe" --json
done
if "$python" -c "import mamba_ssm" 2>/dev/null; then
    step train.log 120 "train mamba without mamba-ssm" "$python" -c \
        'import runpy, sys; sys.modules["mamba_ssm"] = None; runpy.run_module("langinterp", run_name="__main__")' \
        train recipes/mamba.toml "$book" trainer.max_steps=30 --run-name gpu-mamba-without-ssm --quiet
fi
step train.log 120 "train centered" "${langinterp[@]}" train recipes/centered.toml "$book" trainer.max_steps=30 \
    --run-name gpu-centered --quiet
step train.log 60 "automaton" "${langinterp[@]}" automaton --run gpu-centered --reapply 3
step train.log 30 "runs" "${langinterp[@]}" runs

left=$((budget - SECONDS))
if [ "$left" -gt 60 ]; then
    step suite.log "$left" "whole suite" "$python" -m pytest -q -p no:cacheprovider "${workers[@]}" --durations=10
    tail -n 30 "$out/suite.log"
else
    echo "no time left for the whole suite ($left s)"
fi

echo "gpu checks: $([ "$status" = 0 ] && echo all passed || echo SOME FAILED) in $SECONDS s"
exit "$status"
