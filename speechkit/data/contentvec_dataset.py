"""ContentVec pretraining dataset: two speaker-perturbed views of each utterance plus the
speaker's embedding (auspicious3000/contentvec ``contentvec/data/audio/contentvec_dataset.py``).

* The speaker id is component ``speaker_path_index`` of the manifest entry's path (1 in the
  reference's LibriSpeech layout ``subset/speaker/chapter/file``; 2 for the shared test manifest
  ``speech/<corpus>/<speaker>/...``). Its ``spk2info`` entry gives ``spk_emb`` (D,) and the pitch
  range (``lo == 50`` is analysed from 75 Hz).
* Training (``random_views``): ``__getitem__`` returns two views of the utterance, each
  perturbed independently (random "Change gender", then the random EQ;
  ``contentvec_transforms.perturb_view``), drawn from ``default_rng([seed, epoch, 0, key])``.
* Validation: view 1 is the original, view 2 the fixed "Change gender" for the speaker's sex.
* Window before perturbing: with ``random_crop``, an utterance longer than ``max_sample_size`` is
  first cut to a random window of ``max_sample_size`` samples whose start is a whole number of
  label frames (labels cut alike), from ``default_rng([seed, epoch, 3, key])``. The batch crop
  (at most ``max_sample_size``) then falls inside that window, so the crops have the
  reference's distribution (up to the frame grid) while Praat processes only the window, not a
  15 s file of which 2 s are kept. The f0 median of "Change gender" is measured on the window
  (the reference measures it on the whole file).
* ``collater`` crops both views at the SAME start (HuBERT's crop-to-shortest) and returns
  ``net_input = {"source": (B, L) view 1, "source_2": (B, L) view 2, "spk_emb": (B, D),
  "padding_mask": (B, L)}`` plus HuBERT's targets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from speechkit.data.contentvec_transforms import ContentVecPerturbConfig, fixed_view, perturb_view
from speechkit.data.hubert_dataset import ITEM_STREAM, WINDOW_STREAM, HubertDataset
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
        labels = self.get_labels(index)
        wav, labels = self.window(index, wav, labels)
        s = int(self.item_speaker[index])
        floor, ceiling = self.pitch_ranges[s]
        what = self.describe(index)
        if self.random_views:
            rng = np.random.default_rng([self.seed, self.epoch, ITEM_STREAM, int(index)])
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
            "label_list": labels,
        }

    def frame_step(self) -> int | None:
        """Samples per label frame common to every stream (e.g. 320 for 50 and 100 Hz), or None
        when a stream's frame is not a whole number of samples (sequence labels)."""
        step = 1
        for rate in self.label_rates:
            hop = self.sample_rate / rate if rate > 0 else 0.0
            if hop <= 0 or abs(hop - round(hop)) > 1e-9:
                return None
            step = math.lcm(step, int(round(hop)))
        return step

    def window(
        self, index: int, wav: np.ndarray, labels: list[torch.Tensor]
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Cut ``wav`` (L,) and its labels to a random frame-aligned window of
        ``max_sample_size`` samples (see the module docstring); unchanged when the utterance is
        not longer, without ``random_crop`` or with sequence labels."""
        step = self.frame_step()
        size = self.max_sample_size
        if not self.random_crop or step is None or len(wav) <= size:
            return wav, labels
        rng = np.random.default_rng([self.seed, self.epoch, WINDOW_STREAM, int(index)])
        start = int(rng.integers(0, (len(wav) - size) // step + 1)) * step
        cut = []
        for t, rate in zip(labels, self.label_rates):
            hop = int(round(self.sample_rate / rate))
            cut.append(t[start // hop : (start + size) // hop])
        return wav[start : start + size], cut

    def collater(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """HuBERT's collater over both views with one crop start per item, plus
        ``net_input["spk_emb"]`` (B, D)."""
        batch = self.collate(items, ("source", "source_2"))
        if batch:
            batch["net_input"]["spk_emb"] = torch.stack(
                [s["spk_emb"] for s in items if s.get("source") is not None]
            )
        return batch
