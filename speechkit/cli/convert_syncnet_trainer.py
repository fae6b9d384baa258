"""Convert a joonson/syncnet_trainer checkpoint into a speechkit checkpoint.

    speechkit-convert-syncnet-trainer --input voxsrc2020_baseline.model \\
        --output syncnet_baseline.pt [--temporal-stride 2] [--input-scale 32768] [--overwrite]

Reads the reference's bare ``__S__.*`` / ``__L__.*`` state dict without executing pickled code,
maps every key onto ``syncnet_fbank`` and the ``syncnet`` criterion (a missing, unexpected or
mis-shaped key is an error and nothing is written) and writes the result atomically. Then:
``python -m speechkit.train experiment=syncnet_vox2 model.input_scale=32768
checkpoint.finetune_from_model=OUTPUT`` (fine-tuning builds the model from the command line's
config, so repeat the recorded ``input_scale`` there).

Exit status: 0 converted, 2 bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.interop.syncnet import convert_syncnet_trainer
from speechkit.interop.voxceleb_trainer import save_converted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--input", required=True, help="syncnet_trainer model*.model file")
    p.add_argument("--output", required=True, help="speechkit checkpoint to write")
    p.add_argument("--temporal-stride", type=int, default=2, help="not in the weights (2)")
    p.add_argument(
        "--input-scale", type=float, default=32768.0, help="training waveform scale (int16)"
    )
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if Path(args.output).exists() and not args.overwrite:
            raise SpeechkitError(f"{args.output} exists (pass --overwrite)")
        ckpt = convert_syncnet_trainer(args.input, args.temporal_stride, args.input_scale)
        save_converted(ckpt, args.output)
    except SpeechkitError as e:
        print(f"convert_syncnet_trainer: error: {e}", file=sys.stderr)
        return 2
    model = ckpt["cfg"]["model"]
    print(
        f"{args.output}: syncnet_fbank (embed_dim {model['embed_dim']}, temporal_stride "
        f"{model['temporal_stride']}, input_scale {model['input_scale']:g}), "
        f"{len(ckpt['model'])} model + {len(ckpt['criterion'])} loss tensors; fine-tune with "
        f"model.input_scale={model['input_scale']:g} checkpoint.finetune_from_model={args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
