"""Dump per-frame lip features of talking-face clips with a speechkit SyncNet lip stream.

    speechkit-dump-lip-features --checkpoint runs/syncnet_demo/checkpoint_best.pt \\
        --list ../shared/data/lists/video_list.txt --root ../shared/data --out runs/lip \\
        [--features trunk|content] [--image-size 224] [--chunk-frames 64] [--device cpu]

Input: a list of ``video.mp4 [audio.wav]`` lines (``shared/data/lists/video_list.txt``), paths
relative to ``--root``, 25 fps face crops. Output: one ``(F, D)`` float32 ``.npy`` per clip, F =
the clip's video frames, at ``<out>/<audio path>.npy`` (the audio path names it when given, so
``task.lip_dir`` finds it for the ``speaker_id audio.wav`` lists of
``target_speaker_separation``; else the video path). These stand in for the VTP lip features
(512-d, 25 fps) the VoiceVector AV variant reads (Rahimi et al., ICASSP 2024).

Features: the lip 3-D CNN of a ``syncnet_fbank`` checkpoint (Chung and Zisserman, "Out of
time: automated lip sync in the wild", ACCV 2016 workshops; speechkit.models.syncnet). Its
first conv sees 5 frames, so the clip is edge-padded by 2 frames at each end and each output
step is centred on one frame. ``trunk`` (default) is the 512-d ``netcnnlip`` output; ``content``
adds the ``netfclip`` head (``embed_dim``-d). A checkpoint with ``temporal_stride`` s > 1 gives
one step per s frames; each is repeated s times (nearest) to keep one row per frame. Frames are
resized to ``--image-size`` pixels (the lip CNN needs at least 211; 224 as trained).

Exit status: 0 ok, 2 bad input (one line ``dump_lip_features: error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from speechkit.data.lip_features import lip_feature_path
from speechkit.data.lists import check_files_exist, read_list_fields
from speechkit.data.video import read_video_frames
from speechkit.errors import CheckpointError, SpeechkitError

CONTEXT = 5  # frames seen by one lip-CNN output step (its first conv's temporal kernel)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="speechkit-dump-lip-features",
        description="Per-frame lip features (F, D) .npy of mp4 face crops from a SyncNet "
        "(syncnet_fbank) checkpoint's lip stream.",
    )
    p.add_argument("--checkpoint", required=True, help="speechkit syncnet_fbank checkpoint")
    p.add_argument("--list", required=True, help="'video.mp4 [audio.wav]' lines")
    p.add_argument("--root", required=True, help="folder the list paths are relative to")
    p.add_argument("--out", required=True, help="output folder (<audio path>.npy per clip)")
    p.add_argument("--features", choices=("trunk", "content"), default="trunk")
    p.add_argument("--image-size", type=int, default=224, help="frame size in pixels")
    p.add_argument("--chunk-frames", type=int, default=64, help="frames per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace existing .npy files")
    return p.parse_args(argv)


def load_syncnet(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """A ``syncnet_fbank`` model from a speechkit checkpoint, in eval mode.

    Raises:
        CheckpointError: unreadable file, no model inside, or another model than syncnet_fbank.
    """
    from speechkit import components
    from speechkit.registry import MODEL_REGISTRY
    from speechkit.trainer.checkpoint import load_checkpoint_file

    components.import_all()
    state = load_checkpoint_file(path)
    model_cfg = (state.get("cfg") or {}).get("model") or {}
    name = model_cfg.get("_name")
    if name != "syncnet_fbank" or "model" not in state:
        raise CheckpointError(
            f"{path}: expected a syncnet_fbank checkpoint (experiment=syncnet_demo or a "
            f"converted syncnet_trainer model), got model {name!r}"
        )
    model = MODEL_REGISTRY.build(model_cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def lip_features(
    model: nn.Module,
    frames: np.ndarray,
    features: str = "trunk",
    chunk_frames: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(F, H, W, 3) uint8 BGR frames -> (F, D) float32 per-frame lip features.

    D = 512 (``trunk``) or the model's ``embed_dim`` (``content``). See the module docstring
    for the padding and the stride handling. Chunks of ``chunk_frames`` output steps (with
    their 4 frames of context) give the same result as one pass.

    Raises:
        ValueError: no frames, or ``chunk_frames < 1``.
    """
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"expected (F, H, W, 3) frames, got shape {frames.shape}")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    num = frames.shape[0]
    half = CONTEXT // 2
    index = np.clip(np.arange(-half, num + half), 0, num - 1)
    stride = int(model.temporal_stride)
    steps = (num - 1) // stride + 1  # output steps over the num + 4 padded frames
    outputs = []
    for p0 in range(0, steps, chunk_frames):
        p1 = min(p0 + chunk_frames, steps)
        clip = frames[index[p0 * stride : (p1 - 1) * stride + CONTEXT]]
        video = torch.from_numpy(clip).to(device).permute(3, 0, 1, 2).float()[None]
        mid = model.netcnnlip(video).flatten(2)  # (1, 512, p1 - p0)
        if features == "content":
            mid = model.netfclip(mid)
        outputs.append(mid[0].T.float().cpu())
    out = torch.cat(outputs).numpy()
    return np.ascontiguousarray(np.repeat(out, stride, axis=0)[:num], dtype=np.float32)


def run(args: argparse.Namespace) -> int:
    rows = read_list_fields(args.list, (1, 2), "video.mp4 [audio.wav]")
    root = os.path.abspath(args.root)
    check_files_exist(args.list, ((n, os.path.join(root, f[0])) for n, f in rows))
    model = load_syncnet(args.checkpoint, args.device)
    written = 0
    start = time.time()
    for _, fields in rows:
        out = os.path.join(args.out, lip_feature_path(fields[-1]))
        if os.path.exists(out) and not args.overwrite:
            continue
        frames = read_video_frames(os.path.join(root, fields[0]), size=args.image_size)
        feats = lip_features(model, frames, args.features, args.chunk_frames, args.device)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        np.save(out, feats)
        written += 1
    print(
        f"dump_lip_features: wrote {written} of {len(rows)} files to {args.out} "
        f"({time.time() - start:.1f} s)"
    )
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"dump_lip_features: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
