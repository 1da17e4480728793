#!/usr/bin/env bash
# Create .venv and install medsign-forensics with pinned dependency versions (constraints.txt).
# torch is installed first, as the CPU build, so that no CUDA build (several GB) is pulled in by accident;
# set TORCH_SPEC to choose another build. torchxrayvision is installed WITHOUT its dependencies: we only read
# the Open-i report archive shipped in its wheel, and its dependencies would pull torchvision and a CUDA torch.
# The optional `cluster` extra (dask.distributed) is installed too, so that CI runs the Dask engine's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
pip install "$TORCH_SPEC"
pip install -c constraints.txt -e '.[dev,cluster]'  # cluster: dask.distributed for `scan --cluster`
pip install --no-deps -c constraints.txt torchxrayvision
.venv/bin/python -c "import medsign_forensics, torch; print('medsign-forensics', medsign_forensics.__version__, 'torch', torch.__version__)"
