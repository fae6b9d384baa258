"""ContentVec pretraining dataset: two speaker-perturbed views of each utterance plus the
speaker's embedding (research/hubert_contentvec.md section 2.2).

* The speaker id is component ``speaker_path_index`` of the manifest entry's path (1 in the
  reference's LibriSpeech layout ``subset/speaker/chapter/file``; 2 for the shared test manifest
  ``speech/<corpus>/<speaker>/...``). Its ``spk2info`` entry gives ``spk_emb`` (D,) and the pitch
  range (``lo == 50`` is analysed from 75 Hz).
* Training (``random_views``): ``__getitem__`` returns two views of the WHOLE utterance, each
  perturbed independently (random "Change gender", then the random EQ;
  ``contentvec_transforms.perturb_view``), drawn from ``default_rng([seed, epoch, 0, key])``.
* Validation: view 1 is the original, view 2 the fixed "Change gender" for the speaker's sex.
* ``collater`` crops both views at the SAME start (HuBERT's crop-to-shortest) and returns
  ``net_input = {"source": (B, L) view 1, "source_2": (B, L) view 2, "spk_emb": (B, D),
  "padding_mask": (B, L)}`` plus HuBERT's targets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from speechkit.data.contentvec_transforms import ContentVecPerturbConfig, fixed_view, perturb_view
from speechkit.data.hubert_dataset import _ITEM_STREAM, HubertDataset
from speechkit.data.spk2info import SpeakerInfo, load_spk2info, speaker_from_path
from speechkit.errors import DataError

__all__ = ["ContentVecDataset"]


class ContentVecDataset(HubertDataset):
    """HuBERT data + ContentVec's two perturbed views and speaker embeddings.

    Args:
        manifest, label_files, label_rates, dictionaries: as ``HubertDataset``.
        spk2info: a ``spk2info`` file (either format, see ``speechkit.data.spk2info``) or a
            loaded ``{split: {speaker: SpeakerInfo}}`` table.
        split: which table of ``spk2info`` to use (``"train"`` or ``"valid"``).
        random_views: random views (training) or the fixed validation views; ``None``: random
            for ``split == "train"``, as in the reference.
        perturb: the perturbation ranges (defaults: the reference's).
        speaker_path_index: path component holding the speaker id.
        **kwargs: ``HubertDataset`` options (``max_sample_size``, ``crop`` ...).

    Raises:
        DataError: ``split`` not in ``spk2info``, a kept entry whose speaker is not in it, or a
            path without component ``speaker_path_index``; plus ``HubertDataset``'s errors.
    """

    def __init__(
        self,
        manifest: Any,
        label_files: Sequence[Any],
        label_rates: float | Sequence[float],
        dictionaries: Sequence[Any] | None,
        spk2info: str | os.PathLike | dict[str, dict[str, SpeakerInfo]],
        split: str = "train",
        random_views: bool | None = None,
        perturb: ContentVecPerturbConfig | None = None,
        speaker_path_index: int = 1,
        **kwargs: Any,
    ):
        super().__init__(manifest, label_files, label_rates, dictionaries, **kwargs)
        source = spk2info if isinstance(spk2info, str | os.PathLike) else "spk2info"
        table = load_spk2info(spk2info) if isinstance(spk2info, str | os.PathLike) else spk2info
        if split not in table:
            raise DataError(f"{source}: no split {split!r} (it has {sorted(table)})")
        speakers = table[split]
        self.split = split
        self.random_views = split == "train" if random_views is None else random_views
        self.perturb = perturb if perturb is not None else ContentVecPerturbConfig()
        self.speaker_path_index = speaker_path_index

        names = sorted(speakers)
        position = {s: i for i, s in enumerate(names)}
        item_speaker = np.empty(len(self), dtype=np.int64)
        missing: dict[str, str] = {}
        for key in range(len(self)):
            try:
                spk = speaker_from_path(self.paths[key], speaker_path_index)
            except DataError as e:
                raise DataError(f"{self.describe(key)}: {e}") from None
            if spk not in position:
                missing.setdefault(spk, self.describe(key))
                continue
            item_speaker[key] = position[spk]
        if missing:
            shown = "; ".join(f"{s!r} ({w})" for s, w in list(missing.items())[:5])
            raise DataError(
                f"{source}: {len(missing)} speaker(s) of {self.manifest_path} are not in split "
                f"{split!r} (speaker = path component {speaker_path_index}): {shown}"
            )
        self.speakers = names
        self.item_speaker = item_speaker
        infos = [speakers[s] for s in names]
        self.spk_emb = np.stack([i.spk_emb for i in infos]).astype(np.float32)  # (S, D)
        self.pitch_ranges = np.array([i.analysis_range() for i in infos], dtype=np.float64)
        self.is_male = np.array([i.is_male for i in infos], dtype=bool)

    @property
    def spk_dim(self) -> int:
        """D, the size of the speaker embeddings (the model's ``spk_dim``)."""
        return int(self.spk_emb.shape[1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"id", "source": (L,) view 1, "source_2": (L,) view 2, "spk_emb": (D,),
        "label_list": [(T_i,) int64]}`` (views of the whole utterance, float32)."""
        wav = self.load_audio(index)
        s = int(self.item_speaker[index])
        floor, ceiling = self.pitch_ranges[s]
        what = self.describe(index)
        if self.random_views:
            rng = np.random.default_rng([self.seed, self.epoch, _ITEM_STREAM, int(index)])
            view_1 = perturb_view(wav, self.sample_rate, floor, ceiling, rng, self.perturb, what)
            view_2 = perturb_view(wav, self.sample_rate, floor, ceiling, rng, self.perturb, what)
        else:
            view_1 = wav
            view_2 = fixed_view(
                wav, self.sample_rate, floor, ceiling, bool(self.is_male[s]), self.perturb, what
            )
        return {
            "id": int(index),
            "source": self.postprocess(view_1),
            "source_2": self.postprocess(view_2),
            "spk_emb": torch.from_numpy(self.spk_emb[s].copy()),
            "label_list": self.get_labels(index),
        }

    def collater(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """HuBERT's collater over both views with one crop start per item, plus
        ``net_input["spk_emb"]`` (B, D)."""
        batch = self.collate(items, ("source", "source_2"))
        if batch:
            batch["net_input"]["spk_emb"] = torch.stack(
                [s["spk_emb"] for s in items if s.get("source") is not None]
            )
        return batch
