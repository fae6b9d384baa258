#!/usr/bin/env bash
# Idempotent environment set-up for speechkit.
#  - creates .venv (re-used when present)
#  - keeps a CPU machine on the CPU torch wheel (torch==2.13.0) and never replaces a torch that
#    is already installed (a CUDA build on a GPU node stays as it is)
#  - installs speechkit editable with its dev extra
# Re-running is cheap: a stamp records the pyproject.toml it was installed from.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_VERSION="${SPEECHKIT_TORCH_VERSION:-2.13.0}"

if [ ! -x .venv/bin/python ]; then
    # A system Python that already has a CUDA torch is reused (system site-packages visible),
    # so the CUDA build is left alone instead of being shadowed by a CPU wheel.
    if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
        "$PYTHON" -m venv --system-site-packages .venv
    else
        "$PYTHON" -m venv .venv
    fi
fi
VPY=.venv/bin/python
# torchaudio makes transformers import it, and it cannot load here: keep it out.
if "$VPY" -m pip show torchaudio >/dev/null 2>&1; then
    echo "setup.sh: removing torchaudio from .venv (unsupported, breaks transformers)" >&2
    "$VPY" -m pip uninstall -y -q torchaudio
fi

STAMP=.venv/.speechkit-installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VPY" -c "import speechkit, torch" >/dev/null 2>&1; then
    exit 0
fi

if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup.sh: GPU found and no torch installed: installing the registry's CUDA torch" >&2
        "$VPY" -m pip install -q torch
    else
        echo "setup.sh: installing CPU torch==${TORCH_CPU_VERSION}" >&2
        "$VPY" -m pip install -q "torch==${TORCH_CPU_VERSION}"
    fi
fi
"$VPY" -m pip install -q -e ".[dev]"
"$VPY" -m pip uninstall -y -q torchaudio >/dev/null 2>&1 || true
echo "$WANT" > "$STAMP"
echo "setup.sh: environment ready in .venv" >&2
