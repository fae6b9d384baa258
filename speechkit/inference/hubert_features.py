"""Layer features of HuBERT / ContentVec checkpoints (k-means iteration 2, probing, VC front-ends).

``HubertFeatureExtractor.from_checkpoint(path).features(wav, layer)`` returns what fairseq's
``examples/hubert/simple_kmeans/dump_hubert_feature.py`` dumps: the waveform, layer-normalised
over the whole utterance when the checkpoint's task says ``normalize``, is cut into consecutive chunks of ``max_chunk`` samples (1,600,000 = 100 s),
each chunk goes through ``extract_features(mask=False, output_layer=layer)`` on its own, and the
chunk outputs are concatenated. Layers are numbered as fairseq's ``output_layer``: 1-based,
``layer = k`` is the output of Transformer layer k (for pre-LN models without the final
LayerNorm, as fairseq).

``features_batch`` pads several utterances (all their chunks) into one forward pass and gives the
same frames as one-by-one extraction: frame-level padding masks come from the conv length formula
and the time-wise GroupNorm of the Base conv extractor ignores padded frames. (fairseq's padded
forward lets padding change the GroupNorm statistics of shorter utterances.)

Accepted checkpoints (read with the safe loader of ``speechkit.interop.fairseq``: pickled
objects outside an allow-list are refused, never executed):

* speechkit checkpoints: ``cfg["model"]["_name"]`` in ``hubert``, ``hubert_large``,
  ``contentvec`` and ``model`` the state dict;
* fairseq HuBERT and ContentVec checkpoints, legacy (HuBERT layout) or full (told apart by
  their keys: ``args`` / ``optimizer_history`` / ``task_state`` mark a fairseq file).

ContentVec full checkpoints (speaker-conditioned layers ``encoder.layers.12+`` with
``CondLayerNorm`` weights ``*.weight_ln.*``) load as a ``ContentVecModel``
(``contentvec_from_fairseq_checkpoint``). Its ordinary layers (1 .. ``encoder_layers``, 12 in
the released models; the usual feature layers 9 / 12 are among them) need nothing more; the
speaker-conditioned ones (``encoder_layers + 1 ..``) need the speaker embedding of each
utterance: ``features(wav, layer, spk_emb=e)`` with ``e`` a (D,) embedding, or a speaker id
looked up in the ``spk2info.dict`` given to ``from_checkpoint(path, spk2info=...)``.
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
from speechkit.data.spk2info import load_spk2info
from speechkit.errors import CheckpointError, ConfigError, DataError
from speechkit.interop.fairseq import (
    contentvec_from_fairseq_checkpoint,
    hubert_config_from_fairseq,
    load_fairseq_checkpoint,
)
from speechkit.models.hubert import HubertConfig, HubertModel

__all__ = ["HubertFeatureExtractor", "MAX_CHUNK", "chunk_bounds"]

MAX_CHUNK = 1_600_000
"""Samples per independent chunk (fairseq ``dump_hubert_feature.py --max_chunk``, 100 s)."""

SPEECHKIT_MODEL_NAMES = ("hubert", "hubert_large", "contentvec")
_FAIRSEQ_KEYS = ("args", "optimizer_history", "task_state")
_CONTENTVEC_EXTRAS = ("layer_proj.", "encoder.cond_layer_norm.")
_HEAD = ("final_proj.", "label_embs_concat")

Audio = np.ndarray | torch.Tensor | str | os.PathLike
SpeakerEmbedding = np.ndarray | torch.Tensor | str
"""A (D,) speaker embedding, or a speaker id of the extractor's ``spk2info`` table."""


def chunk_bounds(num_samples: int, max_chunk: int = MAX_CHUNK) -> list[tuple[int, int]]:
    """(start, end) sample ranges of fairseq's consecutive, non-overlapping chunks."""
    return [(s, min(s + max_chunk, num_samples)) for s in range(0, num_samples, max_chunk)]


def _get(src: Any, key: str, default: Any = None) -> Any:
    if isinstance(src, dict):
        return src.get(key, default)
    return getattr(src, key, default)


def _detect_normalize(ckpt: dict, fmt: str, cfg: HubertConfig) -> tuple[bool, str]:
    """Whether the model was trained on per-utterance normalised waveforms, and where it says so.

    fairseq: ``cfg.task.normalize`` (``args.normalize`` in legacy files). speechkit:
    ``cfg.task.normalize``, else ``cfg.model.normalize``. Without any such key: the fairseq
    recipes' pairing, ``extractor_mode == "layer_norm"`` (Large / X-Large) means normalised.
    """
    sources: list[tuple[str, Any]] = []
    if fmt == "fairseq" and ckpt.get("args") is not None:
        sources.append(("args.normalize", _get(ckpt["args"], "normalize")))
    cfg_dict = ckpt.get("cfg") if isinstance(ckpt.get("cfg"), dict) else {}
    sources.append(("cfg.task.normalize", _get(cfg_dict.get("task") or {}, "normalize")))
    if fmt == "speechkit":
        sources.append(("cfg.model.normalize", _get(cfg_dict.get("model") or {}, "normalize")))
    for where, value in sources:
        if value is not None:
            return bool(value), where
    return cfg.extractor_mode == "layer_norm", "extractor_mode (no normalize key)"


def _checkpoint_format(ckpt: dict, where: str) -> str:
    if any(k in ckpt for k in _FAIRSEQ_KEYS):
        return "fairseq"
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        name = cfg["model"].get("_name")
        if name not in SPEECHKIT_MODEL_NAMES:
            raise CheckpointError(
                f"{where}: speechkit checkpoint of model {name!r}; expected one of "
                f"{', '.join(SPEECHKIT_MODEL_NAMES)}"
            )
        return "speechkit"
    raise CheckpointError(
        f"{where}: neither a speechkit checkpoint (cfg.model._name) nor a fairseq one "
        f"(keys {', '.join(_FAIRSEQ_KEYS)}); top-level keys: {sorted(ckpt)[:8]}"
    )


def _load_hubert(ckpt: dict, where: str) -> tuple[HubertModel, HubertConfig]:
    """HuBERT or ContentVec-legacy weights into a ``HubertModel`` without the prediction head."""
    cfg = hubert_config_from_fairseq(ckpt, num_classes=[])
    model = HubertModel(cfg)
    model.remove_pretraining_modules()
    skip = _HEAD + _CONTENTVEC_EXTRAS
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith(skip)}
    _load_encoder_weights(model, state, f"{where}: weights do not fit the HuBERT config")
    return model, cfg


def _load_contentvec(ckpt: dict, where: str) -> tuple[HubertModel, HubertConfig]:
    """A full ContentVec checkpoint into a ``ContentVecModel`` without its training heads.

    ``encoder.cond_layer_norm`` may be missing for post-LN models, which never use it."""
    model_cfg = (ckpt.get("cfg") or {}).get("model") if isinstance(ckpt.get("cfg"), dict) else {}
    joint = bool(_get(model_cfg or {}, "cond_layer_norm_joint", False))
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith((*_HEAD, "layer_proj."))}
    model, cfg, _ = contentvec_from_fairseq_checkpoint(
        {**ckpt, "model": state}, strict=False, cond_layer_norm_joint=joint
    )
    model.remove_pretraining_modules()
    unused = () if cfg.layer_norm_first else ("encoder.cond_layer_norm.",)
    _load_encoder_weights(
        model, state, f"{where}: weights do not fit the ContentVec config", unused
    )
    return model, cfg


def _load_encoder_weights(
    model: HubertModel, state: dict, message: str, may_miss: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``model``; CheckpointError naming missing / unexpected keys (keys
    starting with ``may_miss`` may be absent)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(may_miss)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{message} (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


class HubertFeatureExtractor:
    """Frame features of one layer of a HuBERT-family encoder, at 50 Hz (20 ms frames).

    Args:
        model: a ``HubertModel`` (put in eval mode here; its ``final_proj`` is not used).
        sample_rate: input rate in Hz (files are resampled to it).
        normalize: layer-normalise each utterance's waveform first (fairseq ``task.normalize``).
        max_chunk: samples per independent chunk (fairseq's 1,600,000).
        num_layers: layers usable without a speaker embedding (default: the encoder's
            ``num_layers``, all its layers but ContentVec's speaker-conditioned ones).
        info: free-form facts about the source checkpoint (``format``, ``model``,
            ``normalize_source``, ``conditional_layers``).
        spk2info: a ``spk2info.dict`` (``speechkit.data.spk2info``) whose speaker ids
            ``spk_emb=`` may name; its splits are merged.

    Layers ``num_layers + 1 .. num_layers + num_conditional_layers`` (ContentVec) take a speaker
    embedding per utterance (``spk_emb=``).

    Raises:
        ConfigError: ``max_chunk`` shorter than the conv receptive field.
        DataError: unreadable ``spk2info``, or a speaker id with two different embeddings.
    """

    def __init__(
        self,
        model: HubertModel,
        sample_rate: int = 16000,
        normalize: bool = False,
        max_chunk: int = MAX_CHUNK,
        num_layers: int | None = None,
        info: dict | None = None,
        spk2info: str | os.PathLike | None = None,
    ):
        self.model = model.eval()
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        encoder = model.encoder
        self.num_layers = encoder.num_layers if num_layers is None else num_layers
        self.num_conditional_layers = len(encoder.layers) - encoder.num_layers
        self.speakers = {} if spk2info is None else self._read_speakers(spk2info)
        self.receptive_field = self._receptive_field()
        if max_chunk < self.receptive_field:
            raise ConfigError(
                f"max_chunk={max_chunk} samples is shorter than the conv receptive field "
                f"({self.receptive_field} samples)"
            )
        self.max_chunk = int(max_chunk)
        self.info = dict(info or {})

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        max_chunk: int = MAX_CHUNK,
        normalize: bool | None = None,
        spk2info: str | os.PathLike | None = None,
    ) -> HubertFeatureExtractor:
        """Load a speechkit or fairseq HuBERT / ContentVec checkpoint for feature extraction.

        Args:
            path: the checkpoint file.
            device: where the model runs.
            max_chunk: samples per independent chunk.
            normalize: override the waveform normalisation read from the checkpoint
                (``None``: as the checkpoint says; see the module docstring).
            spk2info: speaker table for ``spk_emb=`` speaker ids (ContentVec).

        Raises:
            CheckpointError: unreadable or unsafe file, unknown layout or model name, or
                weights that do not fit the config (the missing / unexpected keys are named).
        """
        where = str(path)
        ckpt = load_fairseq_checkpoint(path, map_location="cpu")
        fmt = _checkpoint_format(ckpt, where)
        full_contentvec = any(".weight_ln." in k for k in ckpt["model"])
        load = _load_contentvec if full_contentvec else _load_hubert
        model, cfg = load(ckpt, where)
        detected, source = _detect_normalize(ckpt, fmt, cfg)
        cfg_dict = ckpt.get("cfg") if isinstance(ckpt.get("cfg"), dict) else {}
        info = {
            "format": fmt,
            "model": (cfg_dict.get("model") or {}).get("_name", "hubert"),
            "normalize_source": source if normalize is None else "override",
            "conditional_layers": len(model.encoder.layers) - model.encoder.num_layers,
            "path": where,
        }
        return cls(
            model.to(device),
            sample_rate=cfg.sample_rate,
            normalize=detected if normalize is None else normalize,
            max_chunk=max_chunk,
            info=info,
            spk2info=spk2info,
        )

    # ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        """Feature dimension C (``encoder_embed_dim``)."""
        return self.model.cfg.encoder_embed_dim

    @property
    def frame_rate(self) -> float:
        """Frames per second (50 for HuBERT: 320-sample stride at 16 kHz)."""
        return self.sample_rate / self.model.feature_extractor.total_stride

    def _receptive_field(self) -> int:
        size = 1
        for _, kernel, stride in reversed(self.model.feature_extractor.spec):
            size = (size - 1) * stride + kernel
        return size

    def num_frames(self, num_samples: int) -> int:
        """Frames ``features`` returns for ``num_samples`` samples: the conv formula
        ``floor((S - 400) / 320) + 1`` summed over the chunks (chunks shorter than the receptive
        field give none)."""
        fe = self.model.feature_extractor
        total = 0
        for s, e in chunk_bounds(num_samples, self.max_chunk):
            if e - s >= self.receptive_field:
                total += int(fe.output_lengths(e - s))
        return total

    @property
    def spk_dim(self) -> int | None:
        """Speaker-embedding size D of the conditional layers (None without such layers)."""
        return self.model.cfg.spk_dim if self.num_conditional_layers else None

    def check_layer(self, layer: int, with_speaker: bool = False) -> None:
        """Raise ``ConfigError`` unless ``layer`` is in ``1 .. num_layers`` (1-based), or, when
        a speaker embedding comes along (``with_speaker``), one of the speaker-conditioned
        layers after them."""
        top = self.num_layers
        if with_speaker and self.num_conditional_layers:
            top = len(self.model.encoder.layers)
        if not isinstance(layer, int | np.integer) or not 1 <= layer <= top:
            first, cond = self.model.encoder.num_layers + 1, self.num_conditional_layers
            extra = (
                f"; layers {first}..{first + cond - 1} of this ContentVec checkpoint are "
                f"speaker-conditioned: pass spk_emb= (a ({self.spk_dim},) speaker embedding, or "
                "a speaker id of the spk2info given to from_checkpoint)"
                if cond and not with_speaker
                else ""
            )
            raise ConfigError(f"layer must be in 1..{top} (1-based), got {layer}{extra}")

    @staticmethod
    def _read_speakers(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        speakers: dict[str, torch.Tensor] = {}
        for entries in load_spk2info(path).values():
            for spk, info in entries.items():
                emb = torch.as_tensor(np.asarray(info.spk_emb, dtype=np.float32))
                if spk in speakers and not torch.equal(speakers[spk], emb):
                    raise DataError(
                        f"{path}: speaker {spk!r} has different embeddings in two splits; "
                        "expected one embedding per speaker"
                    )
                speakers[spk] = emb
        return speakers

    def speaker_embedding(self, spk: SpeakerEmbedding) -> torch.Tensor:
        """(D,) float32 CPU speaker embedding: ``spk`` itself, or the ``spk2info`` entry of the
        speaker id ``spk``.

        Raises:
            DataError: unknown speaker id. ValueError: not a finite (D,) vector, or the model
                has no speaker-conditioned layers.
        """
        if self.spk_dim is None:
            raise ValueError("this checkpoint has no speaker-conditioned layers")
        if isinstance(spk, str):
            if spk not in self.speakers:
                known = (
                    f"the spk2info has {len(self.speakers)} speakers, e.g. "
                    f"{sorted(self.speakers)[:3]}"
                    if self.speakers
                    else "no spk2info was given (from_checkpoint(..., spk2info=FILE))"
                )
                raise DataError(f"speaker {spk!r} not found; {known}")
            emb = self.speakers[spk]
        else:
            emb = torch.as_tensor(spk).detach().float().cpu()
        if emb.shape != (self.spk_dim,) or not bool(torch.isfinite(emb).all()):
            raise ValueError(
                f"speaker embedding of shape {tuple(emb.shape)}; expected ({self.spk_dim},) "
                "finite values"
            )
        return emb

    def _speaker_rows(self, spk_emb: Any, n: int) -> list[torch.Tensor]:
        """One (D,) embedding per utterance from one embedding / id for all, a sequence of
        them, or an (n, D) array."""
        if isinstance(spk_emb, str) or getattr(spk_emb, "ndim", None) == 1:
            return [self.speaker_embedding(spk_emb)] * n
        rows = list(spk_emb)
        if len(rows) != n:
            raise ValueError(f"{len(rows)} speaker embeddings for {n} utterances; expected {n}")
        return [self.speaker_embedding(r) for r in rows]

    def load(self, wav: Audio) -> torch.Tensor:
        """Waveform (L,) float32 on the CPU, normalised when the model expects it.

        ``wav``: (L,) array / tensor at ``sample_rate`` Hz, or an audio file path (decoded by
        ``read_audio``: a file at another rate is resampled with soxr and a multi-channel file
        averaged to mono, each with a WARNING naming the file). Raises ``DataError`` for
        unreadable files or files with NaN/inf samples, ``ValueError`` for arrays that are not
        1-D or hold NaN/inf samples.
        """
        if isinstance(wav, str | os.PathLike):
            x = torch.from_numpy(read_audio(Path(wav), sample_rate=self.sample_rate))
        else:
            x = torch.as_tensor(wav).detach().float().cpu()
        if x.dim() != 1:
            raise ValueError(f"expected a (L,) waveform, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"the waveform holds {int((~torch.isfinite(x)).sum())} non-finite sample(s) "
                "(NaN/inf); expected finite samples in [-1, 1]"
            )
        if self.normalize and x.numel() > 0:
            x = F.layer_norm(x, x.shape)
        return x

    # ------------------------------------------------------------------------------------------
    def _conv_features(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) padded waveforms -> (B, C, T) conv features, padding-independent.

        The default extractor's block 0 GroupNorm (one group per channel: statistics over time)
        is computed over each row's valid frames only; the other blocks are frame-local.
        """
        fe = self.model.feature_extractor
        block0 = fe.conv_layers[0]
        norm = block0[2] if len(block0) > 3 else None
        if (
            source.shape[0] == 1
            or bool((lengths == lengths[0]).all())
            or not isinstance(norm, nn.GroupNorm)
        ):
            return fe(source)
        if norm.num_groups != norm.num_channels:  # not fairseq's layout: one row at a time
            rows = [fe(source[i : i + 1, : int(n)]) for i, n in enumerate(lengths.tolist())]
            T = max(r.shape[-1] for r in rows)
            return torch.cat([F.pad(r, (0, T - r.shape[-1])) for r in rows])
        conv = block0[0]
        h = conv(source.unsqueeze(1)).float()  # (B, C, T0)
        n0 = (lengths - conv.kernel_size[0]) // conv.stride[0] + 1
        valid = (torch.arange(h.shape[-1], device=h.device) < n0[:, None]).unsqueeze(1).float()
        count = n0.clamp(min=1).to(h.dtype).view(-1, 1, 1)
        mean = (h * valid).sum(-1, keepdim=True) / count
        var = ((h - mean).square() * valid).sum(-1, keepdim=True) / count
        h = (h - mean) * torch.rsqrt(var + norm.eps)
        h = h * norm.weight.float().view(1, -1, 1) + norm.bias.float().view(1, -1, 1)
        x = block0[3](h.to(source.dtype))
        for block in fe.conv_layers[1:]:
            x = block(x)
        return x

    @torch.no_grad()
    def _forward_padded(
        self, chunks: list[torch.Tensor], layer: int, spk_emb: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Chunks (each >= receptive field) -> list of (T_i, C) float32 CPU features;
        ``spk_emb``: (num chunks, D) for speaker-conditioned layers."""
        device = self.device
        lengths = torch.tensor([c.numel() for c in chunks], device=device)
        source = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True).to(device)
        model = self.model
        features = self._conv_features(source, lengths)  # (B, C, T)
        frames = model.feature_extractor.output_lengths(lengths)
        T = features.shape[-1]
        padding_mask = torch.arange(T, device=device) >= frames[:, None]
        if not padding_mask.any():
            padding_mask = None
        x = model.layer_norm(features.transpose(1, 2))
        if model.post_extract_proj is not None:
            x = model.post_extract_proj(x)
        x = model.dropout_input(x)
        h = model.encoder.embed_positions(x, padding_mask)
        cond = None if spk_emb is None else spk_emb.to(device, x.dtype)
        x, _ = model.encoder.forward_layers(h, padding_mask, layer - 1, cond)
        return [x[i, : int(n)].float().cpu() for i, n in enumerate(frames.tolist())]

    def features_batch(
        self, wavs: Sequence[Audio], layer: int, spk_emb: Any = None
    ) -> list[torch.Tensor]:
        """Features of several utterances in one padded forward pass (all their chunks).

        Args:
            wavs: (L_i,) waveforms at ``sample_rate`` Hz or audio file paths.
            layer: 1-based Transformer layer (fairseq ``output_layer``).
            spk_emb: speaker embeddings for ContentVec's speaker-conditioned layers (ignored
                by the others): one ``SpeakerEmbedding`` ((D,) vector or spk2info speaker id)
                for every input, or a sequence / (N, D) array with one per input. With the
                reference's joint conditional norms (``cond_layer_norm_joint``) the chunks
                of a conditional layer run one at a time (their statistics mix the rows).

        Returns:
            One (T_i, C) float32 CPU tensor per input, ``T_i = num_frames(L_i)``; the same
            values (to float rounding) as calling ``features`` on each input.

        Raises:
            ConfigError: layer out of range (a speaker-conditioned one without ``spk_emb``).
            DataError: unreadable audio file, unknown speaker id. ValueError: speaker
                embeddings of the wrong shape or count.
        """
        self.check_layer(layer, with_speaker=spk_emb is not None)
        pieces: list[list[torch.Tensor]] = []
        for wav in wavs:
            x = self.load(wav)
            pieces.append(
                [
                    x[s:e]
                    for s, e in chunk_bounds(x.numel(), self.max_chunk)
                    if e - s >= self.receptive_field
                ]
            )
        flat = [c for p in pieces for c in p]
        cond = None
        if layer > self.model.encoder.num_layers:
            rows = self._speaker_rows(spk_emb, len(pieces))
            cond = [e for p, e in zip(pieces, rows) for _ in p]
        if not flat:
            outputs = []
        elif cond is None:
            outputs = self._forward_padded(flat, layer)
        elif getattr(self.model.cfg, "cond_layer_norm_joint", False):
            outputs = [self._forward_padded([c], layer, e[None])[0] for c, e in zip(flat, cond)]
        else:
            outputs = self._forward_padded(flat, layer, torch.stack(cond))
        results, i = [], 0
        for p in pieces:
            parts = outputs[i : i + len(p)]
            i += len(p)
            results.append(
                torch.cat(parts) if parts else torch.zeros(0, self.embed_dim, dtype=torch.float32)
            )
        return results

    def features(
        self, wav: Audio, layer: int, spk_emb: SpeakerEmbedding | None = None
    ) -> torch.Tensor:
        """Features of one utterance: (T, C) float32 on the CPU at ``frame_rate`` Hz.

        Args:
            wav: (L,) waveform (numpy array or tensor, float in [-1, 1] at ``sample_rate`` Hz)
                or an audio file path.
            layer: 1-based Transformer layer (fairseq ``output_layer``).
            spk_emb: for ContentVec's speaker-conditioned layers (``num_layers + 1 ..``): the
                speaker's (D,) embedding, or its id in the extractor's ``spk2info``.

        Returns:
            (T, C) with ``T = num_frames(L)``; inputs longer than ``max_chunk`` samples are
            processed in independent chunks (fairseq's dump script), so frames next to a chunk
            border differ from a single pass, and T can differ from the one-pass conv formula.
            An input shorter than one frame (400 samples) gives (0, C).

        Raises:
            ConfigError: layer out of range (a speaker-conditioned one without ``spk_emb``).
            DataError: unreadable audio file, unknown speaker id. ValueError: a speaker
                embedding that is not a finite (D,) vector.
        """
        return self.features_batch([wav], layer, None if spk_emb is None else [spk_emb])[0]
