"""Target-speaker separation inference: a trained ``voicevector_ae`` checkpoint (positive /
negative enrolment vectors), ``voicevector_av`` checkpoint (the target's lip features) or
composite ``voicevector_vem`` / ``voicevector_avem`` / ``voicevector_ivem`` checkpoint
(enrolment clips through its frozen enrolment net) applied to audio of any length and sample
rate.

Model: Rahimi, Afouras and Zisserman, "VoiceVector: multimodal enrolment vectors for speaker
separation", ICASSP 2024 (:mod:`speechkit.models.voicevector`). Its sinusoidal positional
encoding has ``max_len`` tokens (1500 tokens of 20 ms = 30 s with the paper's sizes), so longer
audio is separated in overlapping chunks:

* ``K = ceil((T - O) / (C - O))`` chunks of ``C`` samples (``chunk_seconds``, at most the
  model's limit), their starts evenly spaced from 0 to ``T - C`` so that neighbours overlap by at
  least ``O`` samples (``overlap_seconds``);
* every chunk is separated with the same enrolment vectors;
* overlap-add with complementary raised-cosine cross-fades over each actual overlap: in an
  overlap of ``L`` samples the later chunk is weighted ``sin^2(pi (t + 0.5) / (2 L))`` and the
  earlier one ``cos^2(...)``, so the weights sum to exactly 1 everywhere and no seam is a hard
  switch from one chunk's output to the next.

Audio-visual models (``voicevector_av``) take the target's lip features (F, lip_dim) at 25 fps,
frame ``j`` covering mixture samples ``[640 j, 640 (j + 1))`` at 16 kHz
(:mod:`speechkit.data.lip_features`; a file's frame count may differ from ``ceil(T / 640)`` by
the module's tolerance and is trimmed / padded to it). For them the chunk and the overlap are
whole numbers of lip frames (the chunk rounded down, the overlap up, to multiples of 640
samples), the mixture is zero-padded to ``640 ceil(T / 640)`` samples when chunked, the chunk
starts are multiples of 640 (:func:`chunk_starts` in frame units), each chunk gets the lip
frames of its own samples, and the estimate is cropped back to T.

Enrolment vectors come from ``.npy`` files written by ``scripts/dump_embeddings.py`` (crop
embeddings (K, D) or one (D,): mean over crops, then L2-normalised, as the training data uses
them) or from enrolment WAVs embedded by a speaker checkpoint
(:class:`speechkit.inference.speaker_embedding.SpeakerEmbedding`, whole utterance,
L2-normalised).

Composites (:mod:`speechkit.models.voicevector_composite`; trained ones, or the reference's
``vem.pth`` / ``avem3.pth`` / ``ivem.pth`` converted by ``speechkit-convert-voicevector``) are
rebuilt with ``enrolment_checkpoint`` and ``separation_init`` emptied: the checkpoint holds both
nets' weights, so no other file is read. :meth:`Separator.embed_clips` turns enrolment clips
(lip features; ``avem`` also the clip's audio, ``ivem`` also a face-embedding folder) into
vectors with the frozen enrolment net, in windows of the length it was trained on
(:mod:`speechkit.inference.clip_enrolment`); those vectors then enrol the inner separation net
exactly as ``voicevector_ae`` vectors do (positives and negatives, the same for every chunk).
They are not re-normalised: the separation net was trained on the enrolment net's raw outputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speechkit.data.audio import audio_info, read_audio, resample_waveform
from speechkit.data.embedding_table import load_embedding, utterance_vector
from speechkit.data.enrolment_clips import ENROL_SEGMENT, MODEL_INPUTS
from speechkit.data.lip_features import (
    DEFAULT_TOLERANCE,
    SAMPLES_PER_FRAME,
    align_lip_features,
    read_lip_features,
)
from speechkit.errors import CheckpointError, ConfigError, DataError
from speechkit.inference.clip_enrolment import (
    EnrolmentClip,
    Source,
    check_clip_counts,
    embed_clips,
    read_enrolment_clip,
)
from speechkit.models.voicevector_composite import COMPOSITE_MODELS

SEPARATION_TASKS = ("target_speaker_separation",)
SEPARATION_MODELS = ("voicevector_ae", "voicevector_av", *COMPOSITE_MODELS)
AV_MODELS = ("voicevector_av",)


def chunk_starts(length: int, chunk: int, overlap: int) -> list[int]:
    """Starts of the chunks covering ``length`` samples (see the module docstring).

    Args:
        length: signal length T in samples (> 0).
        chunk: chunk length C in samples; ``T <= C`` gives one chunk ``[0]``.
        overlap: minimum overlap O between neighbours, ``0 <= O <= C / 2``.

    Returns:
        Increasing starts, the first 0 and the last ``T - C``.

    Raises:
        ValueError: non-positive length / chunk, or an overlap outside ``[0, C / 2]``.
    """
    if length <= 0 or chunk <= 0 or not 0 <= 2 * overlap <= chunk:
        raise ValueError(
            f"need length > 0, chunk > 0 and 0 <= overlap <= chunk / 2; got length {length}, "
            f"chunk {chunk}, overlap {overlap}"
        )
    if length <= chunk:
        return [0]
    count = math.ceil((length - overlap) / (chunk - overlap))
    count = max(count, 2)
    return [round(i * (length - chunk) / (count - 1)) for i in range(count)]


def overlap_add(chunks: Sequence[torch.Tensor], starts: Sequence[int], length: int) -> torch.Tensor:
    """Cross-faded overlap-add of equal-length chunk outputs (C,) into a (length,) signal.

    In each overlap of ``L`` samples between chunk i-1 and chunk i, chunk i is weighted
    ``sin^2(pi (t + 0.5) / (2 L))`` and chunk i-1 ``cos^2`` of the same (t = 0 .. L-1), so
    the weights sum to 1; outside overlaps a chunk has weight 1.

    Raises:
        ValueError: chunk / start counts differ, chunks of different lengths, starts that leave
            a gap, or overlaps longer than half a chunk.
    """
    if len(chunks) != len(starts) or not chunks:
        raise ValueError(f"{len(chunks)} chunks for {len(starts)} starts")
    size = chunks[0].shape[-1]
    if any(c.shape != chunks[0].shape for c in chunks):
        raise ValueError("all chunks must have the same length")
    out = torch.zeros(length, dtype=chunks[0].dtype, device=chunks[0].device)
    weights = [torch.ones(size, dtype=torch.float64) for _ in chunks]
    for i in range(1, len(chunks)):
        ov = starts[i - 1] + size - starts[i]
        if ov < 0 or 2 * ov > size:
            raise ValueError(f"chunks {i - 1} and {i} overlap by {ov} samples (chunk {size})")
        if ov:
            t = torch.arange(ov, dtype=torch.float64)
            rise = torch.sin(math.pi * (t + 0.5) / (2 * ov)) ** 2
            weights[i][:ov] = rise
            weights[i - 1][size - ov :] = 1.0 - rise
    for chunk, start, w in zip(chunks, starts, weights):
        stop = min(start + size, length)
        out[start:stop] += chunk[: stop - start] * w[: stop - start].to(chunk.dtype)
    return out


def load_enrolment_npy(path: str | os.PathLike, emb_dim: int | None = None) -> torch.Tensor:
    """One enrolment vector (D,) float32 from a ``dump_embeddings`` ``.npy`` ((K, D) or (D,)):
    mean over crops, L2-normalised.

    Raises:
        DataError: missing / unreadable file, wrong rank, a D other than ``emb_dim``, a zero
            vector (file named).
    """
    array = load_embedding(path, "the command line", emb_dim)
    return torch.from_numpy(utterance_vector(array, path))


class Separator:
    """``Separator.from_checkpoint(path).separate(mixture, positives, negatives)`` (audio
    enrolment), ``.separate(mixture, lip=features)`` (audio-visual) or, for a composite,
    ``.separate(mixture, sep.embed_clips(lips, audios, faces), ...)``.

    Args:
        model: a separation model with a ``cfg.sample_rate`` and ``max_seconds()``: either
            ``(B, T), (B, N, D), (B, N) long, (B, N) bool -> (B, T)`` (``voicevector_ae``),
            ``(B, T), (B, F, lip_dim) -> (B, T)`` with ``samples_per_frame`` samples per lip
            frame (``voicevector_av``; ``is_av`` is then True), or a composite whose
            ``separation`` net is the former and whose ``enrolment`` net embeds clips
            (``is_composite`` True; ``clip_inputs`` ``v`` / ``av`` / ``iv``).
        device: where it runs.
        chunk_seconds: chunk length for long input; 0 (default) = the model's limit
            ``max_seconds()`` rounded down to a whole 20 ms token (and, for AV, to a whole lip
            frame).
        overlap_seconds: minimum overlap of neighbouring chunks (default 1 s; AV: rounded up to
            a whole lip frame).
        batch_chunks: chunks per forward pass.
        enrol_seconds: composites: the enrolment window (seconds, rounded to whole 25 fps
            frames), the clip length the enrolment net was trained on (``task.enrol_segment``,
            4 s by default; :meth:`from_checkpoint` reads it from the checkpoint).

    Raises:
        ConfigError: a chunk longer than the model allows, an overlap above half a chunk, or
            an enrolment window outside ``[1 frame, the enrolment net's limit]``.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        chunk_seconds: float = 0.0,
        overlap_seconds: float = 1.0,
        batch_chunks: int = 2,
        enrol_seconds: float = ENROL_SEGMENT,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = str(getattr(model, "name", "") or type(model).__name__)
        self.is_composite = self.name in COMPOSITE_MODELS
        # the net that separates: a composite's inner voicevector_ae
        self.net = model.separation if self.is_composite else model
        net = self.net
        self.sample_rate = int(net.cfg.sample_rate)
        self.is_av = self.name in AV_MODELS
        self.emb_dim = None if self.is_av else int(net.cfg.emb_dim)
        self.lip_dim = int(net.cfg.lip_dim) if self.is_av else None
        # samples per lip frame (640 at 16 kHz / 25 fps); chunks move on this grid for AV
        self.frame = int(net.samples_per_frame) if self.is_av else 1
        self.clip_inputs = MODEL_INPUTS[self.name] if self.is_composite else None
        self.enrol_window = self._enrol_window(enrol_seconds) if self.is_composite else 0
        limit = float(net.max_seconds())
        # whole tokens only: the model pads the upsampled input to a multiple of its stride
        token = net.total_stride / net.cfg.internal_rate
        max_chunk = int(math.floor(limit / token) * token * self.sample_rate)
        # the 16 k -> internal-rate upsampling rounds up: keep one token of margin
        max_chunk -= int(math.ceil(token * self.sample_rate))
        max_chunk -= max_chunk % self.frame
        self.chunk = (
            max_chunk if chunk_seconds <= 0 else int(round(chunk_seconds * self.sample_rate))
        )
        self.chunk -= self.chunk % self.frame
        if self.chunk > max_chunk or self.chunk <= 0:
            raise ConfigError(
                f"chunk of {chunk_seconds} s: the model accepts at most {max_chunk} samples "
                f"({max_chunk / self.sample_rate:.2f} s) per forward pass"
            )
        self.overlap = int(round(overlap_seconds * self.sample_rate))
        self.overlap += -self.overlap % self.frame
        if self.overlap < 0 or 2 * self.overlap > self.chunk:
            raise ConfigError(
                f"overlap of {overlap_seconds} s must be between 0 and half a chunk "
                f"({self.chunk / 2 / self.sample_rate:.2f} s)"
            )
        self.batch_chunks = max(1, int(batch_chunks))

    def _enrol_window(self, seconds: float) -> int:
        """The composite's enrolment window in 16 kHz samples (whole lip frames)."""
        enrol = self.model.enrolment
        if self.sample_rate != 16000 or getattr(enrol, "samples_per_frame", 640) != 640:
            raise ConfigError(
                f"{self.name}: enrolment clips are 25 fps lip frames on 16 kHz audio (640 "
                f"samples per frame); this model runs at {self.sample_rate} Hz"
            )
        frames = int(round(float(seconds) * 25))
        if hasattr(enrol, "max_frames"):  # voicevector_embedding_v / _iv
            limit = int(enrol.max_frames())
        else:  # voicevector_embedding_av: its audio limit
            limit = int(round(enrol.max_seconds() * 16000)) // SAMPLES_PER_FRAME
        if not 1 <= frames <= limit:
            raise ConfigError(
                f"{self.name}: an enrolment window of {seconds} s ({frames} lip frames); the "
                f"enrolment net takes 1 to {limit} frames ({limit / 25:.2f} s)"
            )
        return frames * SAMPLES_PER_FRAME

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs
    ) -> Separator:
        """Load a speechkit ``target_speaker_separation`` checkpoint.

        Raises:
            CheckpointError: unreadable / unsafe file, no model inside, or a checkpoint of
                another task or model (both named).
        """
        from speechkit import components
        from speechkit.registry import MODEL_REGISTRY
        from speechkit.trainer.checkpoint import load_checkpoint_file

        components.import_all()
        state = load_checkpoint_file(path)
        cfg = state.get("cfg") or {}
        model_cfg = cfg.get("model")
        if not model_cfg or "model" not in state:
            raise CheckpointError(f"{path}: no model config/weights (not a speechkit checkpoint?)")
        task = str((cfg.get("task") or {}).get("_name") or "")
        name = str(model_cfg.get("_name") or "")
        if name not in SEPARATION_MODELS or (task and task not in SEPARATION_TASKS):
            raise CheckpointError(
                f"{os.fspath(path)}: a {task or 'task-less'} checkpoint (model {name or '?'}); "
                "expected a target_speaker_separation checkpoint of "
                f"{', '.join(SEPARATION_MODELS)}"
            )
        if name in COMPOSITE_MODELS:
            # both nets' weights are in this checkpoint: read no other file
            model_cfg = {**model_cfg, "enrolment_checkpoint": "", "separation_init": ""}
            segment = (cfg.get("task") or {}).get("enrol_segment")
            if segment and "enrol_seconds" not in kwargs:
                kwargs["enrol_seconds"] = float(segment)
        model = MODEL_REGISTRY.build(model_cfg)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            lines = str(e).strip().splitlines()
            detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
            detail = detail if len(detail) <= 200 else detail[:200] + " ..."
            raise CheckpointError(
                f"{os.fspath(path)}: the weights do not fit the saved {name} config ({detail})"
            ) from None
        return cls(model, device=device, **kwargs)

    def read_clips(
        self,
        lips: Sequence[Source],
        audios: Sequence[Source] = (),
        faces: Sequence[Source] = (),
        lip_tolerance: float = DEFAULT_TOLERANCE,
    ) -> list[EnrolmentClip]:
        """Read and check enrolment clips for a composite (nothing runs yet).

        Args:
            lips: per clip a lip-feature ``.npy`` (F, lip_dim) at 25 fps, or the array.
            audios: ``voicevector_avem``: per clip (same order) its audio file (any rate,
                resampled to 16 kHz with a WARNING) or a (T,) array at 16 kHz.
            faces: ``voicevector_ivem``: per clip its face-embedding folder or a (K, face_dim)
                array.
            lip_tolerance: largest accepted ``|F - T / 640|`` between a clip's lip frames and
                its audio (``avem``).

        Raises:
            ConfigError: not a composite; audio or faces the model does not take, or counts
                that do not pair with ``lips``.
            DataError: a bad file (named): see
                :func:`~speechkit.inference.clip_enrolment.read_enrolment_clip`.
        """
        if not self.is_composite:
            raise ConfigError(
                f"enrolment clips given to a {self.name} model; clips are for the composites "
                f"{', '.join(COMPOSITE_MODELS)}"
            )
        check_clip_counts(self.name, self.clip_inputs, len(lips), len(audios), len(faces))
        cfg = self.model.cfg.enrolment
        return [
            read_enrolment_clip(
                lip,
                audios[i] if audios else None,
                faces[i] if faces else None,
                inputs=self.clip_inputs,
                lip_dim=int(cfg.lip_dim),
                face_dim=int(cfg.face_dim),
                tolerance=lip_tolerance,
            )
            for i, lip in enumerate(lips)
        ]

    def clip_vectors(self, clips: Sequence[EnrolmentClip]) -> list[torch.Tensor]:
        """Enrolment vectors (out_dim,) float32 (CPU) of :meth:`read_clips` clips, through the
        composite's frozen enrolment net in windows of ``enrol_window`` samples, averaged per
        clip (:func:`~speechkit.inference.clip_enrolment.embed_clip`); not re-normalised."""
        if not self.is_composite:
            raise ConfigError(f"enrolment clips given to a {self.name} model")
        return embed_clips(self.model.enrolment, clips, self.enrol_window, self.device)

    def embed_clips(
        self,
        lips: Sequence[Source],
        audios: Sequence[Source] = (),
        faces: Sequence[Source] = (),
        lip_tolerance: float = DEFAULT_TOLERANCE,
    ) -> list[torch.Tensor]:
        """:meth:`read_clips` then :meth:`clip_vectors`: one enrolment vector (out_dim,) per
        clip, for :meth:`separate`'s positives or negatives. Raises as :meth:`read_clips`."""
        return self.clip_vectors(self.read_clips(lips, audios, faces, lip_tolerance))

    def enrolment(
        self, positives: Sequence[torch.Tensor], negatives: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack vectors (D,) into ``enrol`` (N, D) float32 and ``enrol_type`` (N,) long (1 =
        positive, 0 = negative).

        Raises:
            ValueError: no positive vector, or a vector that is not (D,) with D = ``emb_dim``.
        """
        if self.is_av:
            raise ValueError(
                "this is an audio-visual checkpoint (voicevector_av): it takes the target's lip "
                "features, not enrolment vectors"
            )
        if not positives:
            raise ValueError("at least one positive enrolment vector is needed")
        vectors = [*positives, *negatives]
        for v in vectors:
            if tuple(v.shape) != (self.emb_dim,):
                raise ValueError(
                    f"enrolment vectors must be ({self.emb_dim},) for this model, got "
                    f"{tuple(v.shape)}"
                )
        enrol = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in vectors])
        types = torch.tensor([1] * len(positives) + [0] * len(negatives), dtype=torch.long)
        return enrol, types

    def load_lip(
        self, path: str | os.PathLike, num_samples: int, tolerance: float = DEFAULT_TOLERANCE
    ) -> torch.Tensor:
        """The lip features of a ``.npy`` file ((F, lip_dim), 25 fps) fitted to a mixture of
        ``num_samples`` samples at ``sample_rate``: ``(ceil(num_samples / 640), lip_dim)``
        float32 (:func:`speechkit.data.lip_features.align_lip_features`).

        Raises:
            ConfigError: an audio-only checkpoint, or a model not at 640 samples per frame.
            DataError: a missing / unreadable / non-finite file, another ``lip_dim``, or more
                than ``tolerance`` frames away from the audio's length (file named).
        """
        if not self.is_av:
            raise ConfigError(
                f"{os.fspath(path)}: lip features given, but the checkpoint is audio-only "
                f"({self.name} takes enrolment vectors)"
            )
        if self.frame != SAMPLES_PER_FRAME:
            raise ConfigError(
                f"{os.fspath(path)}: lip-feature files are 25 fps at 16 kHz ({SAMPLES_PER_FRAME} "
                f"samples per frame); this model has {self.frame} samples per frame"
            )
        features = read_lip_features(path, dim=self.lip_dim)
        return torch.from_numpy(align_lip_features(features, num_samples, path, tolerance))

    def _check_inputs(
        self, length: int, positives: Sequence, negatives: Sequence, lip: Any
    ) -> torch.Tensor | None:
        """The lip tensor (F, lip_dim) for AV, None for AE; ValueError on a wrong combination."""
        if not self.is_av:
            if lip is not None:
                raise ValueError(f"lip features given to an audio-only ({self.name}) model")
            return None
        if positives or negatives:
            raise ValueError(
                "enrolment vectors given to an audio-visual (voicevector_av) model; it takes "
                "the target's lip features"
            )
        if lip is None:
            raise ValueError("an audio-visual (voicevector_av) model needs lip features")
        lip = torch.as_tensor(lip, dtype=torch.float32)
        frames = -(-length // self.frame)
        if tuple(lip.shape) != (frames, self.lip_dim):
            raise ValueError(
                f"a {length}-sample mixture needs lip features ({frames}, {self.lip_dim}) "
                f"({self.frame} samples per frame), got {tuple(lip.shape)}"
            )
        return lip

    @torch.no_grad()
    def separate(
        self,
        mixture: torch.Tensor | np.ndarray,
        positives: Sequence[torch.Tensor] = (),
        negatives: Sequence[torch.Tensor] = (),
        lip: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """The target's estimate (T,) float32 from a mixture (T,) at ``sample_rate`` Hz.

        Audio enrolment models take ``positives`` (at least one) and ``negatives`` (D,)
        vectors; audio-visual ones take ``lip`` (``ceil(T / 640)``, lip_dim) features instead
        (:meth:`load_lip` fits a file to T); composites take the vectors :meth:`embed_clips`
        gives for enrolment clips, which go to their inner separation net. Input up to one
        chunk long is separated in one pass; longer input in overlapping chunks (module
        docstring), all with the same enrolment, or each with the lip frames of its own samples.

        Raises:
            ValueError: a mixture that is not a non-empty finite (T,) signal; bad vectors (see
                :meth:`enrolment`); lip features of the wrong shape, missing for an AV model,
                or given to an audio-only one (enrolment vectors likewise for AV).
        """
        wav = torch.as_tensor(mixture, dtype=torch.float32)
        if wav.dim() != 1 or wav.numel() == 0:
            raise ValueError(f"expected a non-empty mono mixture (T,), got {tuple(wav.shape)}")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("the mixture holds NaN/inf samples")
        length = wav.shape[0]
        lip = self._check_inputs(length, positives, negatives, lip)
        if lip is not None:
            padded = lip.shape[0] * self.frame if length > self.chunk else length
            wav = torch.nn.functional.pad(wav, (0, padded - length))
        else:
            enrol, types = self.enrolment(positives, negatives)
        net = self.net  # a composite's enrolment net already ran (embed_clips)
        total = wav.shape[0]
        size = min(self.chunk, total)
        frame = self.frame
        overlap = min(self.overlap, size // 2)
        if lip is not None and total > size:
            # whole lip frames: total, chunk and overlap are multiples of the frame here
            grid = chunk_starts(total // frame, size // frame, overlap // frame)
            starts = [s * frame for s in grid]
        else:
            starts = chunk_starts(total, size, overlap)
        outputs: list[torch.Tensor] = []
        for i in range(0, len(starts), self.batch_chunks):
            group = starts[i : i + self.batch_chunks]
            batch = torch.stack([wav[s : s + size] for s in group]).to(self.device)
            n = len(group)
            if lip is not None:
                frames = -(-size // frame)
                lips = torch.stack([lip[s // frame : s // frame + frames] for s in group])
                est = net(batch, lips.to(self.device))
            else:
                e = enrol.to(self.device).expand(n, -1, -1)
                t = types.to(self.device).expand(n, -1)
                est = net(batch, e, t, torch.ones_like(t, dtype=torch.bool))
            outputs.extend(est.float().cpu())
        if len(outputs) == 1:
            return outputs[0][:length]
        return overlap_add(outputs, starts, total)[:length]

    def separate_file(
        self,
        path: str | os.PathLike,
        positives: Sequence[torch.Tensor] = (),
        negatives: Sequence[torch.Tensor] = (),
        lip: str | os.PathLike | None = None,
        lip_tolerance: float = DEFAULT_TOLERANCE,
    ) -> tuple[np.ndarray, int]:
        """Separate an audio file: ``(estimate (T_in,) float32, input rate)`` at the FILE's rate
        and length.

        A file at another rate than the model's is resampled to it (soxr) and the estimate
        back; a multi-channel file is averaged to mono; both log a WARNING naming the file.
        ``lip`` (AV models): a lip-feature ``.npy`` of the file, fitted to the resampled
        length by :meth:`load_lip`.

        Raises:
            DataError: missing / unreadable / empty file or NaN samples (file named); a bad lip
                file (see :meth:`load_lip`).
            ConfigError: ``lip`` for an audio-only model.
        """
        path = os.fspath(path)
        info = audio_info(path)
        if info.frames == 0:
            raise DataError(f"{path}: the audio file is empty")
        wav = read_audio(path, self.sample_rate)
        features = None if lip is None else self.load_lip(lip, wav.shape[0], lip_tolerance)
        est = self.separate(torch.from_numpy(wav), positives, negatives, lip=features).numpy()
        est = resample_waveform(est, self.sample_rate, info.sample_rate)
        if est.shape[0] < info.frames:
            est = np.pad(est, (0, info.frames - est.shape[0]))
        return np.ascontiguousarray(est[: info.frames], dtype=np.float32), info.sample_rate


def embed_enrolment_wavs(
    paths: Sequence[str | os.PathLike], speaker_checkpoint: str | os.PathLike | None, device="cpu"
) -> list[torch.Tensor]:
    """Embed enrolment WAVs with a speaker checkpoint: one L2-normalised (D,) vector each.

    Raises:
        ConfigError: WAVs given without ``speaker_checkpoint``.
        CheckpointError / DataError: from :class:`SpeakerEmbedding` (file named).
    """
    if not paths:
        return []
    if speaker_checkpoint is None:
        raise ConfigError(
            f"enrolment audio ({Path(paths[0]).name} ...) needs --speaker-checkpoint (the "
            "speaker model whose vectors the separation model was trained on)"
        )
    from speechkit.inference.speaker_embedding import SpeakerEmbedding

    embedder = SpeakerEmbedding.from_checkpoint(speaker_checkpoint, device=device)
    return [embedder.embed(p).float().cpu() for p in paths]


def load_enrolment(
    paths: Sequence[str | os.PathLike],
    emb_dim: int,
    speaker_checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> list[torch.Tensor]:
    """Enrolment vectors (D,) from ``.npy`` files and/or audio files (any other extension), in
    the given order.

    Raises:
        DataError: a bad ``.npy`` (file named) or audio file; ConfigError: audio without
            ``speaker_checkpoint``; ValueError: an embedder whose D differs from ``emb_dim``.
    """
    audio = [p for p in paths if not os.fspath(p).endswith(".npy")]
    embedded = iter(embed_enrolment_wavs(audio, speaker_checkpoint, device))
    out = []
    for p in paths:
        if os.fspath(p).endswith(".npy"):
            out.append(load_enrolment_npy(p, emb_dim))
        else:
            v = next(embedded)
            if v.shape[0] != emb_dim:
                raise ConfigError(
                    f"{p}: the speaker checkpoint gives {v.shape[0]}-d vectors; the separation "
                    f"model expects {emb_dim}-d"
                )
            out.append(v)
    return out
