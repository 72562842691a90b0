#!/usr/bin/env bash
# Set up a virtual environment in .venv with langinterp installed (editable).
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh --test   # the tool, the test tools (pytest, ruff, triton), nevergrad (sweeps)
#                                    and the reference layers (high-order-layers-torch)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    # The CPU build of torch 2.13.0 is the one this project is tested with; on a machine with CUDA,
    # install the torch build you want first and this step is skipped.
    python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.6"
fi
if [ "${1:-}" = "--test" ]; then
    python -m pip install -q -e ".[test,sweep]"
    # The numerical oracle for our layers. Its declared dependencies (torchvision, hydra, lightning) are not
    # needed by the modules the tests import, and resolving them replaces a CPU torch with a CUDA build.
    python -m pip install -q --no-deps "high-order-layers-torch==2.6.0"
else
    python -m pip install -q -e .
fi
