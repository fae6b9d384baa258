"""Speaker embeddings for verification: extraction over many files, trial scoring, and the
``SpeakerEmbedding`` inference API.

Used by the speaker-verification task's validation, ``scripts/eval_eer.py`` and
``scripts/dump_embeddings.py``. Scoring follows voxceleb_trainer (research/sv_syncnet_enh.md
section 1.8): each file gives ``num_eval`` evenly spaced crops (or the whole utterance), crop
embeddings are L2-normalised when the training loss says so (``test_normalize``), and a trial is
scored either by the cosine of the mean crop embeddings (``cosine``, default) or by the
reference's negative mean Euclidean distance between all crop pairs (``crop_distance``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechkit.data.audio import read_audio
from speechkit.data.speaker_dataset import SpeakerEvalDataset
from speechkit.errors import CheckpointError, ConfigError
from speechkit.metrics.scoring import cosine_scores, mean_crop_distance_score

SCORING = ("cosine", "crop_distance")


@torch.no_grad()
def embed_crops(
    model: nn.Module, crops: torch.Tensor, device: torch.device, chunk: int = 64
) -> torch.Tensor:
    """Embed crops (N, L) -> (N, D) float32 on the CPU, ``chunk`` crops per forward pass.

    A model with an ``embed_identity`` method (the audio-visual ``syncnet_fbank``) is embedded
    with it: the time-mean of its audio identity head, syncnet_trainer's speaker-verification
    embedding (research/sv_syncnet_enh.md section 2.5).
    """
    forward = getattr(model, "embed_identity", None) or model
    out = []
    for i in range(0, crops.shape[0], chunk):
        out.append(forward(crops[i : i + chunk].to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    device: torch.device,
    eval_frames: int = 300,
    num_eval: int = 10,
    normalize: bool = True,
    batch_files: int = 8,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """Crop embeddings of every file (each file once; batched).

    Args:
        model: a speaker model ``(B, L) -> (B, D)``, put in eval mode by the caller.
        paths: audio files (duplicates are embedded once).
        eval_frames: crop length in 10 ms frames; 0 = the whole utterance (one crop).
        num_eval: evenly spaced crops per file.
        normalize: L2-normalise each crop embedding.
        batch_files: files per forward pass (fixed-length crops only; whole utterances go one
            file at a time).
        rank, world_size: embed only files ``rank::world_size`` (distributed validation).

    Returns:
        ``{path: FloatTensor (num_crops, D)}`` for this rank's files.
    """
    dataset = SpeakerEvalDataset(paths, eval_frames=eval_frames, num_eval=num_eval)
    indices = list(range(rank, len(dataset), world_size))
    bs = batch_files if eval_frames > 0 else 1
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=bs,
        collate_fn=dataset.collater,
        num_workers=num_workers,
    )
    result: dict[str, torch.Tensor] = {}
    for batch in loader:
        audio = batch["audio"]  # (B, N, L)
        b, n, length = audio.shape
        emb = embed_crops(model, audio.reshape(b * n, length), device).reshape(b, n, -1)
        if normalize:
            emb = F.normalize(emb, dim=-1)
        for path, e in zip(batch["path"], emb):
            result[path] = e
    return result


def score_trials(
    embeddings: dict[str, torch.Tensor],
    paths1: Sequence[str],
    paths2: Sequence[str],
    scoring: str = "cosine",
) -> np.ndarray:
    """Scores (T,) of trials ``(paths1[i], paths2[i])`` from crop embeddings (higher = same).

    ``cosine``: cosine of the mean crop embeddings. ``crop_distance``: voxceleb_trainer's
    ``-mean(cdist(crops1, crops2))``.

    Raises:
        ConfigError: an unknown scoring name.
    """
    if scoring == "cosine":
        e1 = torch.stack([embeddings[p].mean(0) for p in paths1])
        e2 = torch.stack([embeddings[p].mean(0) for p in paths2])
        return np.asarray(cosine_scores(e1, e2), dtype=np.float64)
    if scoring == "crop_distance":
        return np.array(
            [
                float(mean_crop_distance_score(embeddings[a], embeddings[b], normalize=False))
                for a, b in zip(paths1, paths2)
            ],
            dtype=np.float64,
        )
    raise ConfigError(f"unknown scoring '{scoring}'; expected one of {', '.join(SCORING)}")


class SpeakerEmbedding:
    """Inference wrapper: ``SpeakerEmbedding.from_checkpoint(path).embed(wav_or_path)``.

    Args:
        model: a speechkit speaker model ``(B, L) -> (B, D)``.
        sample_rate: the model's input rate in Hz (files are resampled to it).
        eval_frames: crop length in 10 ms frames; 0 (default) embeds the whole utterance.
        num_eval: evenly spaced crops averaged when ``eval_frames > 0``.
        device: where the model runs.
    """

    def __init__(
        self,
        model: nn.Module,
        sample_rate: int = 16000,
        eval_frames: int = 0,
        num_eval: int = 10,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate = sample_rate
        self.eval_frames = eval_frames
        self.num_eval = num_eval

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any
    ) -> SpeakerEmbedding:
        """Load a speechkit checkpoint (trained or converted from voxceleb_trainer).

        Raises:
            CheckpointError: unreadable/unsafe file, or no speaker model config inside.
        """
        from speechkit import components
        from speechkit.registry import MODEL_REGISTRY
        from speechkit.trainer.checkpoint import load_checkpoint_file

        components.import_all()
        state = load_checkpoint_file(path)
        model_cfg = (state.get("cfg") or {}).get("model")
        if not model_cfg or "model" not in state:
            raise CheckpointError(f"{path}: no model config/weights (not a speechkit checkpoint?)")
        model = MODEL_REGISTRY.build(model_cfg)
        model.load_state_dict(state["model"])
        return cls(model, device=device, **kwargs)

    @torch.no_grad()
    def embed(self, audio: str | os.PathLike | np.ndarray | torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (D,) of one utterance.

        Args:
            audio: a file path, or a mono waveform (L,) float in [-1, 1] at ``sample_rate``.

        Raises:
            DataError: an unreadable, empty or missing file.
            ValueError: a waveform that is not 1-D.
        """
        if isinstance(audio, str | os.PathLike | Path):
            wav = torch.from_numpy(read_audio(audio, self.sample_rate))
        else:
            wav = torch.as_tensor(audio, dtype=torch.float32)
        if wav.dim() != 1:
            raise ValueError(f"expected a mono waveform (L,), got shape {tuple(wav.shape)}")
        if self.eval_frames > 0:
            from speechkit.data.speaker_dataset import eval_crop_starts, frames_to_samples, wrap_pad

            n = frames_to_samples(self.eval_frames)
            padded = torch.from_numpy(wrap_pad(wav.numpy(), n))
            starts = eval_crop_starts(len(padded), n, self.num_eval)
            crops = torch.stack([padded[s : s + n] for s in starts])
        else:
            crops = wav[None]
        emb = F.normalize(embed_crops(self.model, crops, self.device), dim=-1).mean(0)
        return F.normalize(emb, dim=0)
