"""Speaker embeddings for verification: extraction over many files, trial scoring, and the
``SpeakerEmbedding`` inference API.

Used by the speaker-verification task's validation, ``speechkit-eval-eer`` and
``speechkit-dump-embeddings``. Scoring follows clovaai/voxceleb_trainer (``SpeakerNet.py``
``evaluateFromList``): each file gives ``num_eval`` evenly spaced crops (or the whole
utterance), crop embeddings are L2-normalised when the training loss says so (``test_normalize``), and a trial is
scored either by the cosine of the mean crop embeddings (``cosine``, default) or by the
reference's negative mean Euclidean distance between all crop pairs (``crop_distance``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechkit.data.audio import read_audio
from speechkit.data.speaker_dataset import SpeakerEvalDataset
from speechkit.errors import CheckpointError, ConfigError, DataError
from speechkit.metrics.scoring import (
    cosine_scores,
    mean_crop_cosine_score,
    mean_crop_distance_score,
)

SCORING = ("cosine", "crop_distance", "syncnet_reference")
SPEAKER_TASKS = ("speaker_verification", "syncnet")
"""Tasks whose checkpoints hold a speaker model ``(B, L) -> (B, D)``."""
NOT_SPEAKER_TASKS = ("hubert", "contentvec", "target_speaker_separation", "embedding_enhancement")
NOT_SPEAKER_MODELS = ("hubert", "hubert_large", "contentvec", "voicevector_ae")
"""Models (and ``enhancement_*``) that are not speaker embedders: refused by ``from_checkpoint``."""


def check_speaker_checkpoint(path: str | os.PathLike, cfg: dict) -> None:
    """Refuse a checkpoint whose task or model is not a speaker model.

    Args:
        path: the checkpoint (named in the message).
        cfg: its ``cfg`` (``task`` and ``model`` dicts with ``_name``; fairseq's task key
            ``hubert_pretraining`` is recognised too).

    Raises:
        CheckpointError: ``"<path>: a <task> checkpoint (model <model>); expected a speaker
            model: a speaker_verification or syncnet checkpoint ..."``.
    """
    task = str(((cfg.get("task") or {}).get("_name")) or "")
    model = str(((cfg.get("model") or {}).get("_name")) or "")
    if task in SPEAKER_TASKS:
        return
    bad_task = task in NOT_SPEAKER_TASKS or task.endswith("_pretraining")
    bad_model = model in NOT_SPEAKER_MODELS or model.startswith("enhancement_")
    if bad_task or bad_model:
        raise CheckpointError(
            f"{os.fspath(path)}: a {task or 'task-less'} checkpoint (model {model or '?'}); "
            "expected a speaker model: a speaker_verification or syncnet checkpoint (e.g. "
            "resnet_se34l, ecapa_tdnn, rawnet3, syncnet_fbank; convert a voxceleb_trainer model "
            "with scripts/convert_voxceleb_trainer.py)"
        )


@torch.no_grad()
def embed_crops(
    model: nn.Module, crops: torch.Tensor, device: torch.device, chunk: int = 64
) -> torch.Tensor:
    """Embed crops (N, L) -> (N, D) float32 on the CPU, ``chunk`` crops per forward pass.

    A model with an ``embed_identity`` method (the audio-visual ``syncnet_fbank``) is embedded
    with it: the time-mean of its audio identity head, syncnet_trainer's speaker-verification
    embedding (joonson/syncnet_trainer; Chung et al. 2020, "Perfect match:
    self-supervised embeddings for cross-modal retrieval", IEEE JSTSP).
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
    where: dict[str, str] | None = None,
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
        where: ``{path: "list.txt:LINE"}`` named in read errors.

    Files at another rate than 16 kHz are resampled (soxr) and multi-channel files averaged,
    each with a WARNING naming the file (``SpeakerEvalDataset``).

    Returns:
        ``{path: FloatTensor (num_crops, D)}`` for this rank's files.

    Raises:
        DataError: an unreadable or empty file or one with NaN/inf samples (list line and file
            named, also from DataLoader workers).
    """
    dataset = SpeakerEvalDataset(paths, eval_frames=eval_frames, num_eval=num_eval, where=where)
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
    ``-mean(cdist(crops1, crops2))``. ``syncnet_reference``: syncnet_trainer's mean cosine over
    all crop pairs (``mean_crop_cosine_score``; reproduces its released EER 20.4348).

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
    if scoring == "syncnet_reference":
        out = []
        for i in range(0, len(paths1), 1024):  # chunks: (1024, K, D) at a time
            c1 = torch.stack([embeddings[p] for p in paths1[i : i + 1024]])
            c2 = torch.stack([embeddings[p] for p in paths2[i : i + 1024]])
            out.append(mean_crop_cosine_score(c1, c2).double().numpy())
        return np.concatenate(out) if out else np.zeros(0)
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
        self._min_samples: int | None = None

    @torch.no_grad()
    def min_samples(self) -> int:
        """Shortest whole-utterance waveform (samples at ``sample_rate``) the model embeds.

        Found once, by bisection over zero waveforms of 1 .. ``sample_rate`` samples (e.g. 257
        for the 512-point STFT front-ends, whose reflect padding needs more than 256 samples).
        """
        if self._min_samples is None:

            def works(n: int) -> bool:
                try:
                    with warnings.catch_warnings():  # e.g. var() of one frame: a probe only
                        warnings.simplefilter("ignore")
                        embed_crops(self.model, torch.zeros(1, n), self.device)
                except (RuntimeError, ValueError, IndexError):
                    return False
                return True

            lo, hi = 1, self.sample_rate
            if works(lo):
                hi = lo
            while lo < hi:
                mid = (lo + hi) // 2
                if works(mid):
                    hi = mid
                else:
                    lo = mid + 1
            self._min_samples = hi
        return self._min_samples

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any
    ) -> SpeakerEmbedding:
        """Load a speechkit checkpoint (trained or converted from voxceleb_trainer).

        Raises:
            CheckpointError: unreadable/unsafe file, no model config inside, or a checkpoint of
                another kind (HuBERT, ContentVec, separation, enhancement: the message names its
                task and model and says a speaker_verification / syncnet checkpoint is expected).
        """
        from speechkit import components
        from speechkit.registry import MODEL_REGISTRY
        from speechkit.trainer.checkpoint import load_checkpoint_file

        components.import_all()
        state = load_checkpoint_file(path)
        model_cfg = (state.get("cfg") or {}).get("model")
        if not model_cfg or "model" not in state:
            raise CheckpointError(f"{path}: no model config/weights (not a speechkit checkpoint?)")
        check_speaker_checkpoint(path, state.get("cfg") or {})
        model = MODEL_REGISTRY.build(model_cfg)
        model.load_state_dict(state["model"])
        return cls(model, device=device, **kwargs)

    @torch.no_grad()
    def embed(self, audio: str | os.PathLike | np.ndarray | torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (D,) of one utterance.

        A file at another rate is resampled (soxr) and a multi-channel file averaged, each with a
        WARNING naming it. Short input is never padded silently: with ``eval_frames == 0`` (whole
        utterance) a waveform shorter than ``min_samples()`` is refused; with ``eval_frames > 0``
        it is wrap-padded to the crop length, as in evaluation.

        Args:
            audio: a file path, or a mono waveform (L,) float in [-1, 1] at ``sample_rate``.

        Raises:
            DataError: a missing, unreadable or empty file, NaN/inf samples in it, or a file
                shorter than ``min_samples()`` (file, length and minimum named).
            ValueError: a waveform that is not 1-D, is empty, holds NaN/inf, or is shorter than
                ``min_samples()`` (length and minimum named).
        """
        path = os.fspath(audio) if isinstance(audio, str | os.PathLike | Path) else None
        if path is not None:
            wav = torch.from_numpy(read_audio(path, self.sample_rate))
        else:
            wav = torch.as_tensor(audio, dtype=torch.float32)
        if wav.dim() != 1:
            raise ValueError(f"expected a mono waveform (L,), got shape {tuple(wav.shape)}")
        if path is None and not bool(torch.isfinite(wav).all()):
            raise ValueError(
                f"the waveform holds {int((~torch.isfinite(wav)).sum())} non-finite sample(s) "
                "(NaN/inf); expected finite samples in [-1, 1]"
            )
        n = int(wav.shape[0])
        needed = 1 if self.eval_frames > 0 else (self.min_samples() if n < self.sample_rate else 1)
        if n < needed:
            what = f"{n} samples ({1000 * n / self.sample_rate:.1f} ms at {self.sample_rate} Hz)"
            expected = f"expected at least {needed} samples for this model"
            if path is not None:
                raise DataError(f"{path}: {what}; {expected}")
            raise ValueError(f"the waveform has {what}; {expected}")
        if self.eval_frames > 0:
            from speechkit.data.crop import eval_crop_starts, frames_to_samples, wrap_pad

            n = frames_to_samples(self.eval_frames)
            padded = torch.from_numpy(wrap_pad(wav.numpy(), n))
            starts = eval_crop_starts(len(padded), n, self.num_eval)
            crops = torch.stack([padded[s : s + n] for s in starts])
        else:
            crops = wav[None]
        emb = F.normalize(embed_crops(self.model, crops, self.device), dim=-1).mean(0)
        return F.normalize(emb, dim=0)
