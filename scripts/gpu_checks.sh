#!/usr/bin/env bash
# The checks that need a GPU, in one run of under ten minutes, for a machine with CUDA and PyTorch on it
# (as the development workplace's device machine is: run it there from the repository's root).
#
#   bash scripts/gpu_checks.sh
#
# Three phases, each step under its own time limit, the whole inside $GPU_CHECKS_SECONDS (default 570):
# 1. At once, side by side (none of them is timed):
#    - the tests that skip without CUDA, and their neighbours: the layers' Triton kernels compiled for the GPU
#      (tests/test_triton.py runs them in Triton's interpreter only where there is no GPU), the layers' CUDA
#      and bf16-autocast cases, Mamba's scans on CUDA;
#    - every neural family trained on CUDA as `langinterp train` runs it there (bf16-mixed), unchanged but for
#      a local book and a few steps, then `generate` and `evaluate` on the run, in two lanes; the centred
#      recipe and the automaton; Mamba here runs without mamba-ssm (the pure-PyTorch scan on CUDA), unless
#      the machine already has it;
#    - when .whl/ holds mamba-ssm's source distribution (PyPI has no wheels of it) and the machine lacks the
#      package: mamba-ssm built in the background, for this GPU's architecture alone.
# 2. Alone on the GPU, the timings: benchmarks/layers.py --device cuda --passes (the layers' Triton path
#    against cuBLAS), the same for the 2-segment cases forced onto the Triton path (on CUDA they take the
#    dense path: would Triton be faster?), for the many-segment cases forced onto the dense path (a basis
#    matrix K/n times a Linear's input, but cuBLAS: at batch 1024, is it faster than the Triton kernels, and
#    up to which K?) and for the 2-segment n = 2 case on the kink basis (would kinks be faster?),
#    benchmarks/dispatch.py --device cuda (the layers' eager calls against the custom ops' dispatcher), then
#    benchmarks/triton_kernels.py (the kernels' variants alone).
# 3. With mamba-ssm built: tests/test_mamba.py with it (its kernel against the pure-PyTorch scans, in y and
#    in every gradient), and `recipes/mamba.toml` trained, generated from and evaluated with it.
# Then, with the time left, the whole test suite with the GPU visible. It is written for CI's CPU: where a
# test lets `langinterp` pick the device, it gets CUDA here. Each test's result is a line of suite.log.
# A step that would start with too little of the budget left is skipped, and says so. Logs and the
# benchmarks' JSON go to $OUT when it is set (the device tool's folder: at most 8 files come back from it, so
# the JSON of the runs on a forced path and the mamba-ssm build's log stay in /tmp; their tables and the
# build log's tail are in the logs that come back), else gpu-checks/. The last lines list every step.
#
# Python packages the machine lacks can be carried as wheels in .whl/ (see the device tool's notes); they
# are installed into /tmp/site first. Every step runs even when one before it fails; the exit status says
# whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
budget=${GPU_CHECKS_SECONDS:-570}
mkdir -p "$out"
python=${PYTHON:-python3}
results=$(mktemp)
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 LANGINTERP_HOME=$(mktemp -d)
langinterp=("$python" -m langinterp)
step() {  # step LOG SECONDS NAME COMMAND...: run COMMAND under a time limit, its output appended to $out/LOG
    local log=$out/$1 limit=$2 name=$3 began=$SECONDS
    shift 3
    [ $((budget - SECONDS)) -lt "$limit" ] && limit=$((budget - SECONDS))
    if [ "$limit" -lt 15 ]; then
        echo "skipped (no time left) $name" | tee -a "$log" "$results"
        return
    fi
    local own=$(mktemp)
    if timeout "$limit" "$@" >"$own" 2>&1; then
        echo "passed $name ($((SECONDS - began)) s)" | tee -a "$own" "$results"
    else
        local code=$?
        tail -n 15 "$own"
        echo "FAILED ($code) $name ($((SECONDS - began)) s)" | tee -a "$own" "$results"
    fi
    { echo "=== $name"; cat "$own"; } >>"$log"  # whole, though steps run side by side
    rm -f "$own"
}

"$python" - <<'PY' 2>&1 | tee "$out/tests.log" || exit 1  # the environment heads the tests' log
import importlib.util, os, torch
assert torch.cuda.is_available(), "no CUDA device: these checks need one"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(), "with",
      os.cpu_count(), "CPUs")
for name in ("triton", "mamba_ssm", "pytorch_lightning", "lion_pytorch", "platformdirs", "tomli_w", "lightgbm",
             "high_order_layers_torch", "xdist", "pytest_timeout"):
    print(name, "yes" if importlib.util.find_spec(name) else "MISSING")
PY

mamba_site=/tmp/site-mamba
build_mamba() {  # build_mamba SDIST: mamba-ssm compiled for this GPU alone and installed into $mamba_site
    local source=/tmp/mamba-source arch
    arch=$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())') || return 1
    rm -rf "$source" && mkdir -p "$source" && tar xzf "$1" -C "$source" --strip-components 1 || return 1
    # Its setup.py names ten architectures; TORCH_CUDA_ARCH_LIST gives this GPU's alone.
    sed -i 's/cc_flag.append("-gencode")/pass/; s/cc_flag.append("arch=compute_[0-9]*,code=sm_[0-9]*")/pass/' \
        "$source/setup.py"
    (cd "$source" && TORCH_CUDA_ARCH_LIST=$arch MAMBA_FORCE_BUILD=TRUE MAX_JOBS=10 nice -n 19 \
        "$python" -m pip install --no-index --no-build-isolation --no-deps --no-cache-dir --target "$mamba_site" .)
}
mamba_build=
sdist=$(compgen -G ".whl/mamba_ssm-*.tar.gz" | head -n 1)
if [ -n "$sdist" ] && ! "$python" -c "import mamba_ssm" 2>/dev/null; then
    build_mamba "$sdist" >/tmp/mamba_build.log 2>&1 &
    mamba_build=$!
fi

workers=()
"$python" -c "import xdist" 2>/dev/null && workers=(-n 6)
step tests.log 240 "GPU tests" "$python" -m pytest -q -p no:cacheprovider "${workers[@]}" tests/test_triton.py \
    tests/test_triton_benchmark.py tests/test_layers.py tests/test_mamba.py tests/test_scan.py \
    tests/test_devices.py &
tests=$!

book='data.books=["README.md"]'
declare -A extra=([conv]="data.holdout=0.3")  # its 10 000-character window needs a longer held-out tail
train_lane() {  # train_lane LOG RECIPE...: each recipe trained, generated from and evaluated, one by one
    local log=$1 recipe
    shift
    for recipe in "$@"; do
        step "$log" 120 "train $recipe" "${langinterp[@]}" train "recipes/$recipe.toml" "$book" \
            ${extra[$recipe]:-} trainer.max_steps=30 --run-name "gpu-$recipe" --quiet
        step "$log" 60 "generate $recipe" "${langinterp[@]}" generate --run "gpu-$recipe" \
            --prompt "Who are you?" -n 60 --seed 1
        step "$log" 60 "evaluate $recipe" "${langinterp[@]}" evaluate --run "gpu-$recipe" --json
    done
}
train_lane train_b.log conv tail_focus mamba_high_order gpt &
lane=$!
train_lane train_a.log mamba sparse_mlp transformer high_order_input_transformer
# A centred model predicts a middle character from both sides: no `generate`, the automaton instead.
step train_a.log 120 "train centered" "${langinterp[@]}" train recipes/centered.toml "$book" trainer.max_steps=30 \
    --run-name gpu-centered --quiet
step train_a.log 60 "evaluate centered" "${langinterp[@]}" evaluate --run gpu-centered --json
step train_a.log 60 "automaton" "${langinterp[@]}" automaton --run gpu-centered --reapply 3
wait "$tests" "$lane"
step train_a.log 30 "runs" "${langinterp[@]}" runs
tail -n 3 "$out/tests.log"

step layers_cuda.log 150 "layer benchmark" "$python" benchmarks/layers.py --device cuda --passes \
    --out "$out/layers_cuda.json"
tail -n 22 "$out/layers_cuda.log"
step layers_cuda.log 90 "layer benchmark, 2 segments on the Triton path" "$python" benchmarks/layers.py \
    --device cuda --passes --quick --path triton --segments 2 --out /tmp/layers_cuda_triton.json
tail -n 10 "$out/layers_cuda.log"
step layers_cuda.log 90 "layer benchmark, many segments on the dense path" "$python" benchmarks/layers.py \
    --device cuda --passes --quick --path dense --segments 8 32 128 --out /tmp/layers_cuda_dense.json
tail -n 12 "$out/layers_cuda.log"
step layers_cuda.log 60 "layer benchmark, 2 segments on the kink basis" "$python" benchmarks/layers.py \
    --device cuda --passes --quick --path kinks --segments 2 --out /tmp/layers_cuda_kinks.json
tail -n 8 "$out/layers_cuda.log"
step layers_cuda.log 60 "eager calls against the dispatcher" "$python" benchmarks/dispatch.py --device cuda \
    --out /tmp/dispatch_cuda.json
tail -n 10 "$out/layers_cuda.log"
step triton_kernels.log 150 "Triton kernel benchmark" "$python" benchmarks/triton_kernels.py \
    --out "$out/triton_kernels.json"
tail -n 26 "$out/triton_kernels.log"

if [ -n "$mamba_build" ]; then
    while kill -0 "$mamba_build" 2>/dev/null && [ $((budget - SECONDS)) -gt 130 ]; do
        sleep 5
    done
    if kill -0 "$mamba_build" 2>/dev/null; then
        kill "$mamba_build"
        pkill -f mamba-source
        echo "FAILED mamba-ssm build (not done in time)" | tee -a "$results"
    elif wait "$mamba_build"; then
        echo "passed mamba-ssm build (at $SECONDS s)" | tee -a "$results"
        with_mamba=(env PYTHONPATH="$mamba_site:$PYTHONPATH")
        kernel_taken='import mamba_ssm.ops.selective_scan_interface, torch
from langinterp.models.scan import cuda_scan_available
assert cuda_scan_available(torch.device("cuda"))'
        step train_a.log 30 "mamba-ssm's kernel is what Mamba takes on CUDA" "${with_mamba[@]}" "$python" -c \
            "$kernel_taken"
        step train_a.log 90 "Mamba's tests with mamba-ssm" "${with_mamba[@]}" "$python" -m pytest -q \
            -p no:cacheprovider -rs "${workers[@]}" tests/test_mamba.py
        step train_a.log 90 "train mamba with mamba-ssm" "${with_mamba[@]}" "${langinterp[@]}" train \
            recipes/mamba.toml "$book" trainer.max_steps=30 --run-name gpu-mamba-ssm --quiet
        step train_a.log 45 "generate mamba with mamba-ssm" "${with_mamba[@]}" "${langinterp[@]}" generate \
            --run gpu-mamba-ssm --prompt "Who are you?" -n 60 --seed 1
        step train_a.log 45 "evaluate mamba with mamba-ssm" "${with_mamba[@]}" "${langinterp[@]}" evaluate \
            --run gpu-mamba-ssm --json
    else
        echo "FAILED mamba-ssm build" | tee -a "$results"
    fi
    { echo "=== mamba-ssm build log, last lines"; grep -v "^ptxas info\|^ptxas  \|bytes stack frame" \
        /tmp/mamba_build.log | tail -n 40; } >>"$out/train_a.log"
fi

left=$((budget - SECONDS))
if [ "$left" -gt 60 ]; then
    step suite.log "$left" "whole suite" "$python" -m pytest -v -p no:cacheprovider "${workers[@]}" -rf \
        --tb=line --durations=10
    grep -E "(FAILED|ERROR) tests/" "$out/suite.log" | head -n 60
else
    echo "no time left for the whole suite ($left s)"
fi

echo "=== gpu checks, step by step"
cat "$results"
failed=$(grep -c "^FAILED" "$results")
echo "gpu checks: $([ "$failed" = 0 ] && echo all passed || echo "$failed FAILED") in $SECONDS s"
[ "$failed" = 0 ]
