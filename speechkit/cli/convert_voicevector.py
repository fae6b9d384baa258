"""Convert a VoiceVector reference checkpoint (``ae.ckpt``, ``avem3.pth`` ...) into speechkit.

    speechkit-convert-voicevector --input ae.ckpt --output voicevector_ae.pt [--heads 8] \\
        [--overwrite]

The input is the reference's Lightning checkpoint (``state_dict`` with ``net.*`` keys) or a raw
``.pth`` state dict; a composite (``avem3.pth`` / ``vem.pth`` / ``ivem.pth``: separation net
plus enrolment net) becomes a ``voicevector_avem`` / ``voicevector_vem`` / ``voicevector_ivem``
checkpoint holding both nets. Read without executing pickled code. The architecture is read
from the weights (``--heads`` is not recorded in them; the reference uses 8). The key map is
strict: an unmapped key, an unfilled speechkit key or a shape mismatch is an error naming the
keys, and nothing is written.

The output (task ``target_speaker_separation``) fine-tunes with
``checkpoint.finetune_from_model=OUT`` and runs with ``speechkit-separate --checkpoint OUT``
(a composite with enrolment clips: ``--enrol-lip ...``).

Exit status: 0 converted, 2 bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.interop.voicevector import convert_voicevector_file, save_converted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="reference ae.ckpt or *.pth")
    p.add_argument("--output", required=True, help="speechkit checkpoint to write")
    p.add_argument("--heads", type=int, default=8, help="attention heads (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise SpeechkitError(f"{output} exists; pass --overwrite to replace it")
    checkpoint, report = convert_voicevector_file(args.input, {"heads": args.heads})
    save_converted(checkpoint, output)
    cfg = checkpoint["cfg"]["model"]
    sep = cfg.get("separation", cfg)  # a composite's separation net
    n_params = sum(v.numel() for v in checkpoint["model"].values())
    for line in report.lines():
        print(line)
    keys = ("hidden", "depth", "growth", "kernel_size", "transformer_layers", "ffn_dim", "max_len")
    arch = " ".join(f"{k}={sep[k]}" for k in keys)
    print(
        f"converted {len(checkpoint['model'])} tensors (all keys mapped) to {cfg['_name']}: {arch}"
    )
    print(f"wrote {output} ({n_params / 1e6:.2f} M parameters)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SpeechkitError as e:
        print(f"convert_voicevector: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
