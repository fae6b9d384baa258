#!/usr/bin/env python
"""Write the museval BSS-Eval v4 reference values for ``tests/test_separation_metrics.py``.

Run with an interpreter that has ``museval`` (not a speechkit dependency; it pulls in musdb and
stempeg, which want ffmpeg, so its ``metrics`` module is loaded by file path)::

    python tests/make_bss_eval_fixture.py --data ../shared/data \\
        --out tests/data/bss_eval_v4.json

:func:`build_cases` makes the signals from real LibriSpeech speech with numpy only (16-bit WAV
read with scipy), so the test rebuilds exactly the same float64 arrays; for each case the
fixture stores museval's ``bss_eval(reference, estimate, window, hop, framewise_filters=False,
bsseval_sources_version=False)`` SDR per window (what ``museval.evaluate(mode="v4")`` returns
for one source), NaN written as null.

Exit status: 0 ok, 2 bad input (a message on stderr).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from scipy.io import wavfile

SR = 16000
SPEECH = "speech/librispeech_test_other"
TARGET = f"{SPEECH}/1688/1688-142285-0000.wav"
INTERFERER = f"{SPEECH}/367/367-130732-0001.wav"


def read_pcm16(path: Path) -> np.ndarray:
    """A 16-bit PCM mono WAV as float64 in [-1, 1)."""
    rate, data = wavfile.read(path)
    if rate != SR or data.dtype != np.int16 or data.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM, got {rate} Hz {data.dtype}")
    return data.astype(np.float64) / 32768.0


def build_cases(data: Path) -> dict[str, dict]:
    """``{name: {"estimate", "reference" (T,) float64, "window", "hop" (samples)}}``."""
    target = read_pcm16(data / TARGET)
    interferer = read_pcm16(data / INTERFERER)
    n = int(3.5 * SR)
    if len(target) < n or len(interferer) < n:
        raise ValueError(f"{TARGET} and {INTERFERER} must be at least 3.5 s long")
    ref, other = target[:n], interferer[:n]
    filtered = np.convolve(ref, [0.9, 0.25, -0.1, 0.05])[:n]
    est = filtered + 0.3 * other
    silent = ref.copy()
    silent[SR : 2 * SR] = 0.0
    short = int(0.6 * SR)
    return {
        "filtered_plus_interferer": {"estimate": est, "reference": ref, "window": SR, "hop": SR},
        "half_second_hop": {"estimate": est, "reference": ref, "window": SR, "hop": SR // 2},
        "silent_reference_window": {
            "estimate": silent + 0.1 * other,
            "reference": silent,
            "window": SR,
            "hop": SR,
        },
        "shorter_than_window": {
            "estimate": 0.5 * ref[:short] + 0.2 * other[:short],
            "reference": ref[:short],
            "window": SR,
            "hop": SR,
        },
    }


def museval_metrics(site: Path | None):
    """Load ``museval/metrics.py`` without running museval's package ``__init__``."""
    if site is None:
        spec = importlib.util.find_spec("museval")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("museval is not installed in this interpreter")
        site = Path(list(spec.submodule_search_locations)[0])
    spec = importlib.util.spec_from_file_location("museval_metrics", site / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the shared data folder")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        metrics = museval_metrics(None)
        cases = build_cases(Path(args.data))
    except (ImportError, OSError, ValueError) as e:
        print(f"make_bss_eval_fixture: error: {e}", file=sys.stderr)
        return 2
    out = {"museval_file": "museval/metrics.py bss_eval (v4, framewise_filters=False)"}
    for name, case in cases.items():
        sdr, *_ = metrics.bss_eval(
            case["reference"][None, :, None],
            case["estimate"][None, :, None],
            window=case["window"],
            hop=case["hop"],
            framewise_filters=False,
            bsseval_sources_version=False,
        )
        out[name] = [None if np.isnan(v) else float(v) for v in sdr[0]]
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
