"""Convert a clovaai/voxceleb_trainer checkpoint into a speechkit checkpoint.

    speechkit-convert-voxceleb-trainer --input baseline_lite_ap.model \\
        --output baseline_lite_ap.pt [--model resnet_se34l] [--loss angleproto] \\
        [--input-scale 32768] [--n-mels 40] [--encoder-type SAP] [--log-input true] \\
        [--sinc-stride 10] [--model-arg KEY=VALUE ...] [--criterion-arg KEY=VALUE ...] \\
        [--allow-unmapped] [--allow-frontend-mismatch] [--overwrite]

Reads the legacy state dict (every published ``baseline_*.model``), the newer
``{model_state_dict, ...}`` dict and RawNet3's ``{"model": ...}`` file, without executing any
pickled code. The model, its config and the loss are inferred from the weights (and, for the
published files, from the file name, which also sets ``input_scale``: 32768 for the 2020 models
trained on int16-scale audio); the options override what was inferred. The report lists every
unmapped / missing / mis-shaped key and compares the file's torchaudio front-end buffers (window,
mel filterbank, pre-emphasis) with speechkit's.

Strict by default: unmapped keys and front-end mismatches are errors unless allowed; missing
keys and shape mismatches always are. The output is then not written.

Exit status: 0 converted, 2 bad input or a problem (message on stderr).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.interop.voxceleb_trainer import (
    KNOWN_CHECKPOINTS,
    SUPPORTED_MODELS,
    convert_voxceleb_trainer,
    save_converted,
)


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as a Python literal when possible (else a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: object = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = {"true": True, "false": False, "none": None}.get(value.lower(), value)
    return key, parsed


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    known = ", ".join(f"{k} ({v.input_scale:g})" for k, v in KNOWN_CHECKPOINTS.items())
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"input_scale defaults by file name: {known}; otherwise 1.0",
    )
    p.add_argument("--input", required=True, help="voxceleb_trainer .model / .pt file")
    p.add_argument("--output", required=True, help="speechkit checkpoint to write")
    p.add_argument("--model", choices=SUPPORTED_MODELS, help="default: detected from the keys")
    p.add_argument("--loss", help="speechkit criterion name (default: detected from __L__ keys)")
    p.add_argument("--input-scale", type=float, help="waveform multiplier (32768: int16 scale)")
    p.add_argument("--n-mels", type=int, help="mel bands (ResNetSE34L/V2)")
    p.add_argument("--encoder-type", help="SAP/ASP (ResNets), MAX/TAP/SAP (VGGVox40), ECA/ASP")
    p.add_argument("--log-input", type=_bool, help="log of the mel energies (true/false)")
    p.add_argument("--sinc-stride", type=int, help="RawNet3 sinc filterbank stride")
    p.add_argument(
        "--model-arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model config field",
    )
    p.add_argument(
        "--criterion-arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="criterion config field (margin, scale ...)",
    )
    p.add_argument(
        "--allow-unmapped",
        action="store_true",
        help="drop source keys that have no speechkit destination",
    )
    p.add_argument(
        "--allow-frontend-mismatch",
        action="store_true",
        help="convert even if the front-end buffers differ from speechkit's",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise SpeechkitError(f"{output} exists; pass --overwrite to replace it")
    overrides = dict(args.model_arg)
    for name in ("n_mels", "encoder_type", "log_input", "sinc_stride"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    checkpoint, report = convert_voxceleb_trainer(
        args.input,
        model=args.model,
        loss=args.loss,
        input_scale=args.input_scale,
        model_overrides=overrides,
        criterion_overrides=dict(args.criterion_arg),
    )
    print(report.format())
    problems = report.problems(args.allow_unmapped, args.allow_frontend_mismatch)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SpeechkitError(f"{args.input}: not converted:\n{lines}")
    save_converted(checkpoint, output)
    cfg = report.model_cfg
    fields = " ".join(f"model.{k}={v}" for k, v in cfg.items() if k != "_name")
    print(f"wrote {output}")
    print(
        f"evaluate:  python scripts/eval_eer.py --checkpoint {output} --test-list LIST "
        f"--test-path ROOT --eval-frames 400"
    )
    print(
        f"fine-tune: python -m speechkit.train model={report.model} {fields} "
        f"criterion={report.criterion} checkpoint.finetune_from_model={output}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SpeechkitError as e:
        print(f"convert_voxceleb_trainer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
