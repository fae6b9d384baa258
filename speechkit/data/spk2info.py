"""ContentVec speaker table (``spk2info.dict``): speaker embedding and pitch range per speaker.

Two file formats are read (the reference one as auspicious3000/contentvec
``contentvec/data/audio/contentvec_dataset.py`` loads it):

* the reference's pickle ``{"train": {spk: (spk_emb (D,), (lo, hi, x))}, "valid": {...}}``, read
  with a RESTRICTED unpickler that only rebuilds numpy arrays, numpy scalars and builtin
  containers; any other global (a class, ``os.system`` ...) is refused and never executed;
* speechkit's own format (written by ``save_spk2info``): ``torch.save`` of plain containers and
  tensors, read with ``torch.load(weights_only=True)``::

      {"format": "speechkit.spk2info", "version": 1, "embedding_dim": D,
       "splits": {split: {"speakers": [str], "spk_emb": (S, D) float32,
                          "pitch_range": (S, 2) float64, "f0_median": (S,) float64,
                          "sex": [str]}}}

``lo`` and ``hi`` are the pitch floor and ceiling (Hz) used to analyse the speaker's pitch. The
reference marks male speakers with ``lo == 50`` and raises that floor to 75 Hz before analysis;
``SpeakerInfo.is_male`` and ``SpeakerInfo.analysis_range`` apply the same rules. (The reference
also hard-codes LibriSpeech speaker "1447" to (60, 400); that data-specific patch is not
reproduced.) The reference's third value is unused; speechkit stores the measured f0 median.

The speaker of a manifest entry is a component of its relative path (``speaker_from_path``):
index 1 in the reference's LibriSpeech layout ``subset/speaker/chapter/file.flac``.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechkit.atomic import atomic_write_bytes
from speechkit.errors import DataError

__all__ = [
    "MALE_FLOOR_MARKER",
    "SpeakerInfo",
    "load_spk2info",
    "save_spk2info",
    "speaker_from_path",
]

MALE_FLOOR_MARKER = 50.0  # the reference's "male" pitch floor, analysed as 75 Hz
MALE_ANALYSIS_FLOOR = 75.0
FORMAT = "speechkit.spk2info"
VERSION = 1

# the only globals a reference spk2info pickle needs, resolved from this numpy's own reducers
_NUMPY_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("collections", "OrderedDict"): dict,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
}


@dataclass
class SpeakerInfo:
    """One speaker's entry.

    Attributes:
        spk_emb: (D,) float32 speaker embedding.
        pitch_floor: ``lo`` in Hz as stored (50 marks a male speaker in the reference).
        pitch_ceiling: ``hi`` in Hz.
        f0_median: measured median f0 in Hz (NaN when unknown).
        sex: ``"M"``, ``"F"`` or ``""`` (unknown: derived from ``pitch_floor == 50``).
    """

    spk_emb: np.ndarray
    pitch_floor: float
    pitch_ceiling: float
    f0_median: float = math.nan
    sex: str = ""

    @property
    def is_male(self) -> bool:
        """``sex == "M"``, or the reference's rule ``lo == 50`` when the sex is not stored."""
        if self.sex in ("M", "F"):
            return self.sex == "M"
        return self.pitch_floor == MALE_FLOOR_MARKER

    def analysis_range(self) -> tuple[float, float]:
        """``(floor, ceiling)`` in Hz for pitch analysis: a stored floor of 50 becomes 75."""
        lo = MALE_ANALYSIS_FLOOR if self.pitch_floor == MALE_FLOOR_MARKER else self.pitch_floor
        return float(lo), float(self.pitch_ceiling)


def speaker_from_path(rel_path: str, index: int = 1) -> str:
    """Speaker id of a manifest entry: component ``index`` of its ``/``-separated path.

    Raises:
        DataError: the path has no component ``index``.
    """
    parts = rel_path.replace("\\", "/").split("/")
    try:
        return parts[index]
    except IndexError:
        raise DataError(
            f"{rel_path!r} has no path component {index} to take the speaker id from (it has "
            f"{len(parts)}); set speaker_path_index"
        ) from None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


def _float(value, path: Path, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {where}: expected a number, got {value!r}") from None


def _from_reference(obj, path: Path) -> dict[str, dict[str, SpeakerInfo]]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of splits, got {type(obj).__name__}")
    table: dict[str, dict[str, SpeakerInfo]] = {}
    for split, speakers in obj.items():
        if not isinstance(speakers, dict):
            raise DataError(f"{path}: split {split!r}: expected a dict of speakers")
        table[str(split)] = {}
        for spk, info in speakers.items():
            where = f"split {split!r}, speaker {spk!r}"
            if not (
                isinstance(info, tuple | list)
                and len(info) == 2
                and isinstance(info[1], tuple | list)
                and len(info[1]) >= 2
            ):
                raise DataError(f"{path}: {where}: expected (spk_emb, (lo, hi, x)), got {info!r}")
            emb = np.asarray(info[0])
            if emb.ndim != 1 or not np.issubdtype(emb.dtype, np.number):
                raise DataError(f"{path}: {where}: spk_emb must be a 1-D numeric array")
            extra = info[1][2] if len(info[1]) > 2 else math.nan
            table[str(split)][str(spk)] = SpeakerInfo(
                spk_emb=emb.astype(np.float32),
                pitch_floor=_float(info[1][0], path, where),
                pitch_ceiling=_float(info[1][1], path, where),
                f0_median=math.nan if extra is None else _float(extra, path, where),
            )
    return table


def _from_speechkit(obj, path: Path) -> dict[str, dict[str, SpeakerInfo]]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DataError(f"{path}: not a speechkit spk2info file (no format '{FORMAT}')")
    if obj.get("version", 0) > VERSION:
        raise DataError(f"{path}: spk2info version {obj['version']} is newer than {VERSION}")
    table: dict[str, dict[str, SpeakerInfo]] = {}
    for split, data in obj["splits"].items():
        emb = data["spk_emb"].float().numpy()
        ranges = data["pitch_range"].double().numpy()
        medians = data["f0_median"].double().numpy()
        table[split] = {
            spk: SpeakerInfo(
                emb[i], float(ranges[i, 0]), float(ranges[i, 1]), float(medians[i]), data["sex"][i]
            )
            for i, spk in enumerate(data["speakers"])
        }
    return table


def load_spk2info(path: str | os.PathLike) -> dict[str, dict[str, SpeakerInfo]]:
    """Read a ``spk2info`` file in either format (detected from its first bytes).

    Returns:
        ``{split: {speaker: SpeakerInfo}}``.

    Raises:
        DataError: missing or malformed file, or a pickle that needs anything other than numpy
            arrays/scalars and builtin containers (refused, never executed).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: spk2info file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the spk2info file ({e})") from None
    if data[:4] == b"PK\x03\x04":  # torch.save zip archive
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise DataError(f"{path}: cannot read the spk2info file safely ({e})") from None
        try:
            return _from_speechkit(obj, path)
        except (KeyError, AttributeError, TypeError, IndexError) as e:
            raise DataError(f"{path}: malformed speechkit spk2info file ({e!r})") from None
    if data[:1] == b"\x80":  # a pickle (protocol >= 2): the reference's format
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data)).load()
        except pickle.UnpicklingError as e:
            raise DataError(
                f"refusing to load {path}: the pickle needs more than numpy arrays and plain "
                f"containers, which could execute code ({e})"
            ) from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise DataError(f"{path}: corrupt spk2info pickle ({e!r})") from None
        return _from_reference(obj, path)
    raise DataError(
        f"{path}: unknown spk2info format; expected the reference's pickle or a speechkit file"
    )


def save_spk2info(
    path: str | os.PathLike, table: dict[str, dict[str, SpeakerInfo]], legacy_pickle: bool = False
) -> None:
    """Write a speaker table atomically (temporary file, fsync, rename).

    Args:
        path: output file.
        table: ``{split: {speaker: SpeakerInfo}}``; every embedding has the same size D.
        legacy_pickle: write the reference's pickle layout (for the original ContentVec code)
            instead of speechkit's format.

    Raises:
        DataError: embeddings of different sizes, or an empty table.
    """
    dims = {info.spk_emb.shape for split in table.values() for info in split.values()}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise DataError(f"{path}: every speaker needs a (D,) embedding of one size; got {dims}")
    if legacy_pickle:
        obj = {
            split: {
                spk: (
                    np.asarray(i.spk_emb, np.float32),
                    (i.pitch_floor, i.pitch_ceiling, i.f0_median),
                )
                for spk, i in speakers.items()
            }
            for split, speakers in table.items()
        }
        payload = pickle.dumps(obj, protocol=4)
    else:
        splits = {}
        for split, speakers in table.items():
            names = list(speakers)
            infos = [speakers[s] for s in names]
            splits[split] = {
                "speakers": names,
                "spk_emb": torch.from_numpy(
                    np.stack([i.spk_emb for i in infos]).astype(np.float32)
                ),
                "pitch_range": torch.tensor(
                    [[i.pitch_floor, i.pitch_ceiling] for i in infos], dtype=torch.float64
                ),
                "f0_median": torch.tensor([i.f0_median for i in infos], dtype=torch.float64),
                "sex": [i.sex for i in infos],
            }
        obj = {
            "format": FORMAT,
            "version": VERSION,
            "embedding_dim": next(iter(dims))[0],
            "splits": splits,
        }
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        payload = buffer.getvalue()
    atomic_write_bytes(path, payload)
