"""Layer features of HuBERT / ContentVec checkpoints (k-means iteration 2, probing, VC front-ends).

``HubertFeatureExtractor.from_checkpoint(path).features(wav, layer)`` returns what fairseq's
``examples/hubert/simple_kmeans/dump_hubert_feature.py`` dumps (research/hubert_contentvec.md
section 1.5): the waveform, layer-normalised over the whole utterance when the checkpoint's task
says ``normalize``, is cut into consecutive chunks of ``max_chunk`` samples (1,600,000 = 100 s),
each chunk goes through ``extract_features(mask=False, output_layer=layer)`` on its own, and the
chunk outputs are concatenated. Layers are numbered as fairseq's ``output_layer``: 1-based,
``layer = k`` is the output of Transformer layer k (for pre-LN models without the final
LayerNorm, as fairseq).

``features_batch`` pads several utterances (all their chunks) into one forward pass and gives the
same frames as one-by-one extraction: frame-level padding masks come from the conv length formula
and the time-wise GroupNorm of the Base conv extractor ignores padded frames. (fairseq's padded
forward lets padding change the GroupNorm statistics of shorter utterances.)

Accepted checkpoints (read with the safe loader of ``speechkit.checkpoints.fairseq``: pickled
objects outside an allow-list are refused, never executed):

* speechkit checkpoints: ``cfg["model"]["_name"]`` in ``hubert``, ``hubert_large``,
  ``contentvec`` and ``model`` the state dict;
* fairseq HuBERT and ContentVec checkpoints, legacy (HuBERT layout) or full (told apart by
  their keys: ``args`` / ``optimizer_history`` / ``task_state`` mark a fairseq file).

ContentVec full checkpoints hold speaker-conditioned layers (``encoder.layers.12+`` with
``CondLayerNorm`` weights ``*.weight_ln.*``) that need a speaker embedding. They are not loaded:
only the unconditional layers (1 .. ``encoder_layers``, 12 in the released models; the usual
feature layers 9 / 12 are among them) are available, and asking for a conditional layer raises
``ConfigError``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechkit.checkpoints.fairseq import hubert_config_from_fairseq, load_fairseq_checkpoint
from speechkit.data.audio import read_audio
from speechkit.errors import CheckpointError, ConfigError
from speechkit.models.hubert import HubertConfig, HubertModel

__all__ = ["HubertFeatureExtractor", "MAX_CHUNK", "chunk_bounds"]

MAX_CHUNK = 1_600_000
"""Samples per independent chunk (fairseq ``dump_hubert_feature.py --max_chunk``, 100 s)."""

SPEECHKIT_MODEL_NAMES = ("hubert", "hubert_large", "contentvec")
_FAIRSEQ_KEYS = ("args", "optimizer_history", "task_state")
_CONDITIONAL = re.compile(r"^encoder\.layers\.(\d+)\..*\.weight_ln\.")
_CONTENTVEC_EXTRAS = ("layer_proj.", "encoder.cond_layer_norm.")
_HEAD = ("final_proj.", "label_embs_concat")

Audio = np.ndarray | torch.Tensor | str | os.PathLike


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


def _encoder_state(state: dict, n_plain: int, where: str) -> dict:
    """State dict without the prediction head and ContentVec's conditional / extra modules."""
    conditional = sorted({int(m.group(1)) for k in state if (m := _CONDITIONAL.match(k))})
    if conditional and conditional[0] != n_plain:
        raise CheckpointError(
            f"{where}: speaker-conditioned layers start at encoder.layers.{conditional[0]}, but "
            f"the config has encoder_layers={n_plain} unconditional layers"
        )
    out = {}
    for k, v in state.items():
        if k.startswith(_HEAD) or k.startswith(_CONTENTVEC_EXTRAS):
            continue
        m = re.match(r"^encoder\.layers\.(\d+)\.", k)
        if conditional and m and int(m.group(1)) >= n_plain:
            continue
        out[k] = v
    return out


class HubertFeatureExtractor:
    """Frame features of one layer of a HuBERT-family encoder, at 50 Hz (20 ms frames).

    Args:
        model: a ``HubertModel`` (put in eval mode here; its ``final_proj`` is not used).
        sample_rate: input rate in Hz (files are resampled to it).
        normalize: layer-normalise each utterance's waveform first (fairseq ``task.normalize``).
        max_chunk: samples per independent chunk (fairseq's 1,600,000).
        num_layers: usable layers (default: all of ``model.encoder.layers``).
        info: free-form facts about the source checkpoint (``format``, ``model``,
            ``normalize_source``, ``conditional_layers``).

    Raises:
        ConfigError: ``max_chunk`` shorter than the conv receptive field.
    """

    def __init__(
        self,
        model: HubertModel,
        sample_rate: int = 16000,
        normalize: bool = False,
        max_chunk: int = MAX_CHUNK,
        num_layers: int | None = None,
        info: dict | None = None,
    ):
        self.model = model.eval()
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        self.num_layers = len(model.encoder.layers) if num_layers is None else num_layers
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
    ) -> HubertFeatureExtractor:
        """Load a speechkit or fairseq HuBERT / ContentVec checkpoint for feature extraction.

        Args:
            path: the checkpoint file.
            device: where the model runs.
            max_chunk: samples per independent chunk.
            normalize: override the waveform normalisation read from the checkpoint
                (``None``: as the checkpoint says; see the module docstring).

        Raises:
            CheckpointError: unreadable or unsafe file, unknown layout or model name, or
                weights that do not fit the config (the missing / unexpected keys are named).
        """
        where = str(path)
        ckpt = load_fairseq_checkpoint(path, map_location="cpu")
        fmt = _checkpoint_format(ckpt, where)
        cfg = hubert_config_from_fairseq(ckpt, num_classes=[])
        state = ckpt["model"]
        conditional = sorted({int(m.group(1)) for k in state if (m := _CONDITIONAL.match(k))})
        model = HubertModel(cfg)
        model.remove_pretraining_modules()
        result = model.load_state_dict(
            _encoder_state(state, cfg.encoder_layers, where), strict=False
        )
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{where}: weights do not fit the HuBERT config (missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
            )
        detected, source = _detect_normalize(ckpt, fmt, cfg)
        cfg_dict = ckpt.get("cfg") if isinstance(ckpt.get("cfg"), dict) else {}
        info = {
            "format": fmt,
            "model": (cfg_dict.get("model") or {}).get("_name", "hubert"),
            "normalize_source": source if normalize is None else "override",
            "conditional_layers": len(conditional),
            "path": where,
        }
        return cls(
            model.to(device),
            sample_rate=cfg.sample_rate,
            normalize=detected if normalize is None else normalize,
            max_chunk=max_chunk,
            info=info,
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

    def check_layer(self, layer: int) -> None:
        """Raise ``ConfigError`` unless ``layer`` is in ``1 .. num_layers`` (1-based)."""
        if not isinstance(layer, int | np.integer) or not 1 <= layer <= self.num_layers:
            cond = self.info.get("conditional_layers", 0)
            extra = (
                f"; layers {self.num_layers + 1}..{self.num_layers + cond} of this ContentVec "
                "checkpoint are speaker-conditioned and not available without a speaker "
                "embedding"
                if cond
                else ""
            )
            raise ConfigError(
                f"layer must be in 1..{self.num_layers} (1-based), got {layer}{extra}"
            )

    def load(self, wav: Audio) -> torch.Tensor:
        """Waveform (L,) float32 on the CPU, normalised when the model expects it.

        ``wav``: (L,) array / tensor at ``sample_rate`` Hz, or an audio file path (decoded and
        resampled by ``read_audio``). Raises ``DataError`` for unreadable files, ``ValueError``
        for arrays that are not 1-D.
        """
        if isinstance(wav, str | os.PathLike):
            x = torch.from_numpy(read_audio(Path(wav), sample_rate=self.sample_rate))
        else:
            x = torch.as_tensor(wav).detach().float().cpu()
        if x.dim() != 1:
            raise ValueError(f"expected a (L,) waveform, got shape {tuple(x.shape)}")
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
    def _forward_padded(self, chunks: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
        """Chunks (each >= receptive field) -> list of (T_i, C) float32 CPU features."""
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
        x, _ = model.encoder.forward_layers(h, padding_mask, layer - 1)
        return [x[i, : int(n)].float().cpu() for i, n in enumerate(frames.tolist())]

    def features_batch(self, wavs: Sequence[Audio], layer: int) -> list[torch.Tensor]:
        """Features of several utterances in one padded forward pass (all their chunks).

        Args:
            wavs: (L_i,) waveforms at ``sample_rate`` Hz or audio file paths.
            layer: 1-based Transformer layer (fairseq ``output_layer``).

        Returns:
            One (T_i, C) float32 CPU tensor per input, ``T_i = num_frames(L_i)``; the same
            values (to float rounding) as calling ``features`` on each input.

        Raises:
            ConfigError: layer out of range. DataError: unreadable audio file.
        """
        self.check_layer(layer)
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
        outputs = self._forward_padded(flat, layer) if flat else []
        results, i = [], 0
        for p in pieces:
            parts = outputs[i : i + len(p)]
            i += len(p)
            results.append(
                torch.cat(parts) if parts else torch.zeros(0, self.embed_dim, dtype=torch.float32)
            )
        return results

    def features(self, wav: Audio, layer: int) -> torch.Tensor:
        """Features of one utterance: (T, C) float32 on the CPU at ``frame_rate`` Hz.

        Args:
            wav: (L,) waveform (numpy array or tensor, float in [-1, 1] at ``sample_rate`` Hz)
                or an audio file path.
            layer: 1-based Transformer layer (fairseq ``output_layer``).

        Returns:
            (T, C) with ``T = num_frames(L)``; inputs longer than ``max_chunk`` samples are
            processed in independent chunks (fairseq's dump script), so frames next to a chunk
            border differ from a single pass, and T can differ from the one-pass conv formula.
            An input shorter than one frame (400 samples) gives (0, C).

        Raises:
            ConfigError: layer out of range. DataError: unreadable audio file.
        """
        return self.features_batch([wav], layer)[0]
