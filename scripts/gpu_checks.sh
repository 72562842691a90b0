#!/usr/bin/env bash
# The checks that need a GPU, in one run of about ten minutes, for a machine with CUDA and PyTorch on it
# (as the development workplace's device machine is: run it there from the repository's root).
#
#   bash scripts/gpu_checks.sh
#
# 1. The tests that skip without CUDA, and their neighbours: the layers' Triton kernels compiled for the GPU
#    (tests/test_triton.py runs them in Triton's interpreter only where there is no GPU), the layers' CUDA
#    and bf16-autocast cases, Mamba's scans on CUDA (mamba-ssm's kernel when it is installed).
# 2. `langinterp train recipes/mamba.toml` on CUDA, unchanged but for a local book and a few steps; when
#    mamba-ssm is installed, a second time with its import blocked (the pure-PyTorch scan on CUDA).
# 3. benchmarks/layers.py --device cuda --quick: the layers' Triton path against cuBLAS.
# Logs and the benchmark's JSON go to $OUT when it is set (the device tool's folder), else gpu-checks/.
#
# Python packages the machine lacks can be carried as wheels in .whl/ (see the device tool's notes); they
# are installed into /tmp/site first. Every step runs even when one before it fails; the exit status says
# whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 LANGINTERP_HOME=/tmp/langinterp-gpu-checks
status=0

"$python" - <<'PY' 2>&1 | tee "$out/environment.txt" || exit 1
import importlib.util, torch
assert torch.cuda.is_available(), "no CUDA device: these checks need one"
print("torch", torch.__version__, "on", torch.cuda.get_device_name())
for name in ("triton", "mamba_ssm", "pytorch_lightning", "lion_pytorch", "platformdirs", "tomli_w", "lightgbm"):
    print(name, "yes" if importlib.util.find_spec(name) else "MISSING")
PY

timeout 420 "$python" -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_layers.py \
    tests/test_mamba.py tests/test_scan.py tests/test_devices.py 2>&1 | tee "$out/tests.log" || status=1

timeout 150 "$python" -m langinterp train recipes/mamba.toml 'data.books=["README.md"]' trainer.max_steps=40 \
    --run-name gpu-mamba --quiet 2>&1 | tee "$out/train_mamba.log" || status=1

if "$python" -c "import mamba_ssm" 2>/dev/null; then
    timeout 150 "$python" -c 'import runpy, sys; sys.modules["mamba_ssm"] = None; runpy.run_module("langinterp", run_name="__main__")' \
        train recipes/mamba.toml 'data.books=["README.md"]' trainer.max_steps=40 --run-name gpu-mamba-without-ssm \
        --quiet 2>&1 | tee "$out/train_mamba_without_ssm.log" || status=1
fi

timeout 240 "$python" benchmarks/layers.py --device cuda --quick --out "$out/layers_cuda.json" 2>&1 \
    | tee "$out/layers_cuda.log" || status=1

echo "gpu checks: $([ "$status" = 0 ] && echo all passed || echo SOME FAILED)"
exit "$status"
