#!/usr/bin/env bash
# Issue 10's GPU checks in one command, for a lent GPU machine (no network there).
#
#   benchmarks/gpu_checks.sh prepare   # here: wheels of speechkit's missing dependencies for
#                                      # Python 3.12 and the data subset into .device/ (git-ignored)
#   benchmarks/gpu_checks.sh run       # there: from the repository root, with .device carried
#
# The GPU image has Python 3.12 with a CUDA torch, transformers, pytest and numpy, but not
# hydra-core, omegaconf, antlr4, soundfile, soxr or cffi, and ../shared beside the checkout does
# not travel: `prepare` puts both into .device/ (about 35 MB: the wheels, the shared lists, the
# noise and RIR files and the 211-speaker LibriSpeech cohort). `run` installs the wheels into
# /tmp/site and, writing each log and JSON line to $OUT (else ./gpu_results):
#   1. pytest -m gpu (tests/test_gpu.py: bf16/fp16 training, NCCL, a compiled CUDA run and its
#      exact resume, the device augmentation and noise bank on CUDA vs the worker path);
#   2. benchmarks/hubert_step.py --device cuda: HuBERT Base bf16 audio-s/s and MFU;
#   3. benchmarks/sv_train_step.py --device cuda --workers 8: the Trainer's data_wait with the
#      noise bank on the device vs augmentation in the workers.
# About 6-8 minutes in all; each step has its own time limit, so one hang does not eat the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=.device
PY312=${PY312:-python3.12}

prepare() {
  grep -qsx '/.device/' .git/info/exclude || echo '/.device/' >> .git/info/exclude
  rm -rf "$DEV" && mkdir -p "$DEV/whl" "$DEV/data/speech"
  # pip wheel: the binary wheels for this interpreter (3.12, x86-64 like the GPU machine), and
  # a wheel built from antlr4's source (it has none on PyPI)
  "$PY312" -m pip wheel -q --no-deps -w "$DEV/whl" hydra-core==1.3.2 omegaconf==2.3.0 \
    antlr4-python3-runtime==4.9.3 soundfile soxr cffi pycparser || return 1
  local shared
  shared=$(.venv/bin/python -c 'from speechkit.cli.paths import find_shared_data as f; print(f("lists/cohort_list.txt") or "")')
  [ -n "$shared" ] || { echo "gpu_checks: shared data not found" >&2; return 1; }
  cp -r "$shared/lists" "$shared/noise" "$shared/rir" "$DEV/data/"
  cp -r "$shared/speech/librispeech_train_clean_100_cohort" "$DEV/data/speech/"
  du -sh "$DEV"
  echo "now: run tool, command 'benchmarks/gpu_checks.sh run', carry [\".device\"], timeout_s 560"
}

run() {
  local out=${OUT:-gpu_results}
  mkdir -p "$out"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$DEV"/whl/*.whl || return 1
  export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 SPEECHKIT_SHARED_DATA=$PWD/$DEV/data
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' \
    | tee -a "$out/gpu.txt"
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
    > "$out/pytest_gpu.log" 2>&1
  echo "pytest -m gpu: exit $?" | tee -a "$out/gpu.txt"
  timeout 150 python3 benchmarks/hubert_step.py --device cuda \
    > "$out/hubert_step.json" 2> "$out/hubert_step.log"
  echo "hubert_step: exit $?" | tee -a "$out/gpu.txt"
  timeout 200 python3 benchmarks/sv_train_step.py --device cuda --workers 8 --updates 40 \
    > "$out/sv_train_step.json" 2> "$out/sv_train_step.log"
  echo "sv_train_step: exit $?" | tee -a "$out/gpu.txt"
  tail -n 3 "$out"/pytest_gpu.log
  cat "$out"/*.json
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
