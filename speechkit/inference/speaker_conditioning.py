"""Which speaker embedding conditions ContentVec's speaker-conditioned layers in a feature dump.

A full ContentVec checkpoint (Qian et al. 2022, "ContentVec: An Improved Self-Supervised Speech
Representation by Disentangling Speakers", ICML; reference ``contentvec/models/contentvec.py``)
has, after its ordinary Transformer layers, layers whose layer norms are conditioned on a (D,)
speaker embedding. Dumping one of those layers needs an embedding per utterance, from one of:

* ``emb_file``: a ``.npy`` holding one (D,) vector, used for every utterance;
* ``spk2info`` + ``speaker``: that speaker's embedding in a ``spk2info.dict``, for every
  utterance;
* ``spk2info`` alone: each utterance's own speaker, path component ``speaker_path_index`` of its
  manifest path (``speechkit.data.spk2info.speaker_from_path``; 1 in LibriSpeech's
  ``subset/speaker/chapter/file`` layout, as ContentVec's pretraining data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechkit.data.manifest import Manifest
from speechkit.data.spk2info import speaker_from_path
from speechkit.errors import ConfigError, DataError
from speechkit.inference.hubert_features import HubertFeatureExtractor

__all__ = ["SpeakerConditioning", "load_embedding_file"]

HINT = (
    "pass --spk-emb FILE.npy (one (D,) vector for every utterance) or --spk2info FILE "
    "[--speaker ID] (a speaker's embedding; without --speaker each utterance's speaker is "
    "path component --speaker-path-index of its manifest path)"
)


def load_embedding_file(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """One speaker embedding from a ``.npy`` file: (D,) float32.

    Args:
        path: the ``.npy`` (read with ``allow_pickle=False``).
        dim: the D expected (the model's ``spk_dim``), or None for any.

    Raises:
        DataError: missing or unreadable file, or an array that is not a finite (D,) vector.
    """
    try:
        emb = np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: speaker-embedding file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the speaker embedding as .npy ({e})") from None
    shape = f"({dim},)" if dim is not None else "(D,)"
    if emb.ndim != 1 or (dim is not None and emb.shape[0] != dim):
        raise DataError(f"{path}: an array of shape {emb.shape}; expected one {shape} vector")
    if not np.issubdtype(emb.dtype, np.number) or not np.isfinite(emb).all():
        raise DataError(f"{path}: expected finite numbers, got dtype {emb.dtype} or NaN/inf")
    return emb.astype(np.float32)


@dataclass
class SpeakerConditioning:
    """The speaker source of a dump (module docstring); give at most one of ``emb_file`` and
    ``spk2info``, and ``speaker`` only with ``spk2info``.

    Use: ``validate()``; build the extractor with ``spk2info=self.spk2info``; ``bind(extractor,
    layer)``; ``check_manifest(...)``; then pass ``spk_emb(rel_paths)`` to
    ``HubertFeatureExtractor.features_batch`` for each batch.

    Attributes:
        emb_file: ``.npy`` with one (D,) embedding. spk2info: a ``spk2info.dict`` (either
            format of ``speechkit.data.spk2info``; its splits are merged). speaker: a speaker
            id of ``spk2info``. speaker_path_index: path component holding the speaker id.
    """

    emb_file: str | None = None
    spk2info: str | None = None
    speaker: str | None = None
    speaker_path_index: int = 1

    def __post_init__(self) -> None:
        self._emb: np.ndarray | None = None
        self._active = False

    @property
    def given(self) -> bool:
        """Whether any speaker source was given."""
        return self.emb_file is not None or self.spk2info is not None

    def validate(self) -> None:
        """Raises ConfigError for a contradictory combination of options."""
        if self.emb_file is not None and self.spk2info is not None:
            raise ConfigError("give --spk-emb or --spk2info, not both")
        if self.speaker is not None and self.spk2info is None:
            raise ConfigError("--speaker names a speaker of --spk2info FILE; give --spk2info")
        if self.speaker_path_index < 0:
            raise ConfigError(f"--speaker-path-index must be >= 0, got {self.speaker_path_index}")

    def bind(self, extractor: HubertFeatureExtractor, layer: int) -> None:
        """Check the options against the checkpoint and layer; load ``emb_file``.

        Raises:
            ConfigError: a speaker-conditioned layer without a speaker source (the message says
                which options to pass), or a speaker source for a checkpoint without
                speaker-conditioned layers; plus ``check_layer``'s range error.
            DataError: an unreadable / wrongly shaped ``emb_file``, or ``speaker`` not in
                ``spk2info``.
        """
        where = extractor.info.get("path", "the checkpoint")
        extractor.check_layer(layer, with_speaker=True)  # in range at all
        conditioned = layer > extractor.num_layers
        if conditioned and not self.given:
            first = extractor.num_layers + 1
            last = extractor.num_layers + extractor.num_conditional_layers
            raise ConfigError(
                f"layer {layer} of {where} is speaker-conditioned (ContentVec layers "
                f"{first}..{last} need a ({extractor.spk_dim},) speaker embedding): {HINT}"
            )
        if self.given and not extractor.num_conditional_layers:
            raise ConfigError(
                f"{where} has no speaker-conditioned layers; drop --spk-emb / --spk2info"
            )
        self._active = conditioned
        if self.emb_file is not None:
            self._emb = load_embedding_file(self.emb_file, extractor.spk_dim)
        if self.speaker is not None:
            extractor.speaker_embedding(self.speaker)  # DataError naming the known speakers

    @property
    def active(self) -> bool:
        """Whether the layer given to ``bind`` is speaker-conditioned (the source is used)."""
        return self._active

    def describe(self) -> dict[str, Any]:
        """The source as JSON-able facts for a dump's metadata (empty when not ``active``)."""
        if not self._active:
            return {}
        if self.emb_file is not None:
            return {"spk_emb": str(self.emb_file)}
        if self.speaker is not None:
            return {"spk2info": str(self.spk2info), "speaker": self.speaker}
        return {"spk2info": str(self.spk2info), "speaker_path_index": self.speaker_path_index}

    def check_manifest(
        self, manifest: Manifest, start: int, end: int, extractor: HubertFeatureExtractor
    ) -> None:
        """Per-utterance mode: every entry ``[start, end)`` has its speaker in ``spk2info``.

        Raises:
            DataError: ``"<manifest>:<line> (<path>): speaker <id> (path component N) is not
                in <spk2info> ..."``, or a path without component ``speaker_path_index``.
        """
        if not self._active or self.spk2info is None or self.speaker is not None:
            return
        for i in range(start, end):
            try:
                spk = speaker_from_path(manifest.paths[i], self.speaker_path_index)
            except DataError as e:
                raise DataError(f"{manifest.where(i)}: {e}") from None
            if spk not in extractor.speakers:
                raise DataError(
                    f"{manifest.where(i)}: speaker {spk!r} (path component "
                    f"{self.speaker_path_index}) is not in {self.spk2info} "
                    f"({len(extractor.speakers)} speakers); set --speaker-path-index or --speaker"
                )

    def spk_emb(self, rel_paths: list[str]) -> Any:
        """The ``spk_emb`` argument of ``features_batch`` for utterances ``rel_paths``: None
        (layer not conditioned), one (D,) vector or speaker id for all, or one id per path."""
        if not self._active:
            return None
        if self._emb is not None:
            return self._emb
        if self.speaker is not None:
            return self.speaker
        return [speaker_from_path(p, self.speaker_path_index) for p in rel_paths]
