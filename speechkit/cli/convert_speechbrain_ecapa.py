"""Convert a SpeechBrain ECAPA-TDNN ``embedding_model.ckpt`` into a speechkit checkpoint.

    speechkit-convert-speechbrain-ecapa --input spkrec-ecapa-voxceleb/embedding_model.ckpt \\
        --output ecapa_speechbrain.pt [--dilations 1,2,3,4,1] [--f-min 0] [--f-max 8000] \\
        [--top-db 80] [--no-mean-norm] [--overwrite]

The input is SpeechBrain's plain ``torch.save`` of ``ECAPA_TDNN.state_dict()`` (read without
executing pickled code). The architecture is read from the weights; dilations (not recorded in
the weights) default to SpeechBrain's ``1,2,3,4,1``. The front-end options match SpeechBrain's
``Fbank`` defaults and ``spkrec-ecapa-voxceleb``'s sentence mean normalisation; change them only
when the source recipe did. The key map is strict: any unmapped source key, missing speechkit key
or shape mismatch is an error naming the keys, and nothing is written.

The output (model ``ecapa_tdnn_speechbrain``, task ``speaker_verification``) loads with
``SpeakerEmbedding.from_checkpoint`` and ``speechkit-dump-embeddings``; with
``--eval-frames 0`` and without ``--normalize`` the latter writes SpeechBrain's
``EncoderClassifier.encode_batch`` vectors (whole utterance, un-normalised).

Exit status: 0 converted, 2 bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.interop.speechbrain_ecapa import (
    MODEL_NAME,
    convert_speechbrain_ecapa_file,
    save_converted,
)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="SpeechBrain embedding_model.ckpt")
    p.add_argument("--output", required=True, help="speechkit checkpoint to write")
    p.add_argument(
        "--dilations",
        type=_int_list,
        help="per layer, comma-separated (default 1,2,3,4,1 for five layers)",
    )
    p.add_argument("--f-min", type=float, help="lowest mel frequency in Hz (default 0)")
    p.add_argument("--f-max", type=float, help="highest mel frequency in Hz (default Nyquist)")
    p.add_argument("--top-db", type=float, help="dynamic range kept in dB (default 80)")
    p.add_argument(
        "--no-mean-norm",
        action="store_true",
        help="skip the sentence mean normalisation of the features",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise SpeechkitError(f"{output} exists; pass --overwrite to replace it")
    overrides: dict[str, object] = {}
    for name in ("f_min", "f_max", "top_db"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_mean_norm:
        overrides["mean_norm"] = False
    checkpoint = convert_speechbrain_ecapa_file(args.input, args.dilations, overrides)
    save_converted(checkpoint, output)
    cfg = checkpoint["cfg"]["model"]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(v.numel() for k, v in checkpoint["model"].items() if not k.endswith(stats))
    arch = " ".join(f"{k}={v}" for k, v in cfg.items() if k != "_name")
    print(f"converted {len(checkpoint['model'])} tensors (all keys mapped) to {MODEL_NAME}: {arch}")
    print(f"wrote {output} ({n_params / 1e6:.2f} M parameters)")
    print(
        f"embed: speechkit-dump-embeddings --checkpoint {output} --list LIST --root ROOT "
        "--out DIR --eval-frames 0   (whole utterance, un-normalised: SpeechBrain's vectors)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SpeechkitError as e:
        print(f"convert_speechbrain_ecapa: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
