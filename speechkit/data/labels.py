"""Frame-aligned label files for HuBERT / ContentVec pretraining (facebookresearch/fairseq
``fairseq/data/audio/hubert_dataset.py`` and ``fairseq/tasks/hubert_pretraining.py``).

* A label file (``train.km``) has one line per MANIFEST entry, in manifest order, each holding
  the space-separated unit ids of that utterance at ``label_rate`` Hz (50 Hz for labels from
  HuBERT features, 100 Hz for MFCC labels).
* A dictionary (``dict.km.txt``) has one ``<symbol> <count>`` line per unit (fairseq writes
  ``"<id> 1"`` for id = 0..K-1).

Encoding follows fairseq's ``Dictionary``: it starts with four specials, ``<s>`` = 0 (bos),
``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, so the symbol on line ``j`` (0-based) of the
dictionary file gets index ``4 + j`` and unknown symbols map to 3. A fairseq HuBERT checkpoint's
``label_embs_concat`` therefore has ``K + 4`` rows per label stream (504 for 500 units;
fairseq#5276), which is ``LabelDictionary.num_classes``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speechkit.errors import DataError

__all__ = ["BOS", "EOS", "PAD", "UNK", "LabelDictionary", "LabelFile", "check_lengths"]

logger = logging.getLogger(__name__)

BOS, PAD, EOS, UNK = 0, 1, 2, 3
NUM_SPECIALS = 4
_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_SCAN_BLOCK = 1 << 24  # bytes read at a time when indexing a label file
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


class LabelDictionary:
    """fairseq-compatible label dictionary: 4 specials, then the file's symbols in file order.

    Args:
        symbols: the unit symbols (strings), in dictionary-file order.

    Attributes:
        symbols: (K,) the file's symbols.
        num_classes: ``K + 4`` (the rows of fairseq's ``label_embs_concat`` for this stream).
        pad, unk: 1 and 3.
    """

    pad = PAD
    unk = UNK

    def __init__(self, symbols: Sequence[str]):
        self.symbols = list(symbols)
        self._index = {s: NUM_SPECIALS + i for i, s in enumerate(self.symbols)}
        # fast path for the usual "dummy" dictionary 0..K-1: index = int(symbol) + 4
        self._identity = self.symbols == [str(i) for i in range(len(self.symbols))]
        self.source: Path | None = None  # the dict.*.txt it was loaded from (for messages)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelDictionary:
        """Read a ``dict.{label}.txt`` file (``<symbol> <count>`` per line).

        Raises:
            DataError: missing file, a line without exactly 2 fields (a trailing
                ``#fairseq:overwrite`` flag is accepted), a non-integer count, a duplicate
                symbol, a symbol that is one of fairseq's specials, or no symbols. Messages
                name the file and line.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as e:
            raise DataError(f"{path}: label dictionary not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read the label dictionary ({e})") from e
        symbols: list[str] = []
        seen: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if fields[-1] == "#fairseq:overwrite":
                fields = fields[:-1]
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DataError(
                    f"{path}:{number}: expected '<symbol> <count>' (e.g. '17 1'), got {line!r}"
                )
            symbol = fields[0]
            if symbol in _SPECIALS:
                raise DataError(f"{path}:{number}: {symbol!r} is a reserved special symbol")
            if symbol in seen:
                raise DataError(
                    f"{path}:{number}: duplicate symbol {symbol!r} (first on line {seen[symbol]})"
                )
            seen[symbol] = number
            symbols.append(symbol)
        if not symbols:
            raise DataError(f"{path}: the label dictionary is empty; expected '<symbol> <count>'")
        dictionary = cls(symbols)
        dictionary.source = path
        return dictionary

    @classmethod
    def dummy(cls, num_units: int) -> LabelDictionary:
        """The dictionary fairseq's recipe writes for k-means units: symbols ``0..K-1``."""
        return cls([str(i) for i in range(num_units)])

    @property
    def num_classes(self) -> int:
        return len(self.symbols) + NUM_SPECIALS

    def __len__(self) -> int:
        return self.num_classes

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Map symbols to indices (fairseq ``encode_line(append_eos=False,
        add_if_not_exist=False)``).

        Args:
            tokens: (T,) symbols.

        Returns:
            (T,) int64 indices: ``4 + position`` in the dictionary file, 3 for unknown symbols.
        """
        if self._identity:
            try:
                ids = np.array(tokens, dtype=np.int64)
            except ValueError:
                ids = None
            # "007" or "+7" parse as integers but are not dictionary symbols
            if ids is not None and all(str(i) == t for i, t in zip(ids.tolist(), tokens)):
                known = (ids >= 0) & (ids < len(self.symbols))
                return np.where(known, ids + NUM_SPECIALS, UNK)
        return np.fromiter((self._index.get(t, UNK) for t in tokens), np.int64, len(tokens))

    def encode_strict(self, tokens: Sequence[str], where: str) -> np.ndarray:
        """``encode``, but a symbol outside the dictionary is an error instead of ``<unk>``.

        A HuBERT target that is not a dictionary unit (labels from another k-means, a
        ``dict.km.txt`` of fewer clusters) would otherwise train silently on class 3.

        Args:
            tokens: (T,) symbols of one label line.
            where: ``"labels.km:LINE"`` for the message.

        Returns:
            (T,) int64 indices (never ``UNK``).

        Raises:
            DataError: ``"<where>: unit '<symbol>' (label N of the line) is not in the
                dictionary; expected one of its K units ..."``.
        """
        ids = self.encode(tokens)
        unknown = np.flatnonzero(ids == UNK)
        if len(unknown):
            i = int(unknown[0])
            shown = f"'{self.symbols[0]}'..'{self.symbols[-1]}'" if self.symbols else "none"
            name = f" {self.source}" if self.source is not None else ""
            raise DataError(
                f"{where}: unit {tokens[i]!r} (label {i + 1} of the line; {len(unknown)} unknown "
                f"on the line) is not in the dictionary{name}; expected one of its "
                f"{len(self.symbols)} units ({shown}): were the labels made with another k-means "
                "or dict.km.txt?"
            )
        return ids


def _scan(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets (N + 1,) of the lines and tokens per line (N,), reading in blocks."""
    ends: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    base = 0
    carry = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(_SCAN_BLOCK)
            chunk = carry + data
            if not data:  # end of file: a last line without a newline still counts
                if not chunk:
                    break
                chunk += b"\n"  # clipped to the file size below
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                carry = chunk
                continue
            body, carry = chunk[:cut], chunk[cut:]
            arr = np.frombuffer(body, dtype=np.uint8)
            newline = np.flatnonzero(arr == 10)
            space = _WHITESPACE[arr]
            token_start = ~space & np.concatenate(([True], space[:-1]))
            tokens_before = np.concatenate(([0], np.cumsum(token_start)))
            at_end = tokens_before[newline + 1]
            counts.append(np.diff(np.concatenate(([0], at_end))))
            ends.append(base + newline + 1)
            base += len(body)
            if not data:
                break
    offsets = np.concatenate([[0], *ends]).astype(np.int64)
    if len(offsets) > 1:
        offsets[-1] = min(offsets[-1], path.stat().st_size)
    lengths = np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)
    return offsets, lengths


class LabelFile:
    """Random access to the lines of a label file with one ``seek`` + ``read`` per item.

    The byte offset and token count of every line are computed once here, scanning the file in
    16 MiB blocks with numpy. The file is opened lazily, once per process: a DataLoader worker
    forked from the main process opens its own handle on first use (never one open per item).

    Args:
        path: the label file (UTF-8 text, one line per manifest entry).

    Attributes:
        path: the file.
        lengths: (N,) int64 number of labels on each line.

    Raises:
        DataError: the file is missing or unreadable.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: label file not found")
        try:
            self._offsets, self.lengths = _scan(self.path)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read the label file ({e})") from e
        self._handle = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.lengths)

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            # after a fork the parent's handle shares its file position: open our own
            self._handle = open(self.path, "rb")  # noqa: SIM115 (kept open for reuse)
            self._pid = os.getpid()
        return self._handle

    def read_line(self, index: int) -> str:
        """Text of line ``index`` (0-based), without the newline.

        Raises:
            IndexError: ``index`` out of range.
            DataError: the line is not valid UTF-8 or the file changed since it was indexed.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: line index {index} out of range ({len(self)} lines)")
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        f = self._file()
        f.seek(start)
        data = f.read(end - start)
        if len(data) != end - start:
            raise DataError(
                f"{self.path}: the file changed while in use (short read at line {index + 1})"
            )
        try:
            return data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{self.path}:{index + 1}: not UTF-8 text ({e})") from e

    def read_tokens(self, index: int) -> list[str]:
        """Whitespace-separated tokens of line ``index`` (0-based)."""
        return self.read_line(index).split()

    def close(self) -> None:
        """Close this process's handle (it is reopened on the next read)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, -1  # a handle cannot be pickled (spawn workers)
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def check_lengths(
    sizes: Sequence[int] | np.ndarray,
    label_lengths: Sequence[int] | np.ndarray,
    sample_rate: float,
    label_rate: float,
    tol: float = 0.1,
    *,
    names: Sequence[str] | None = None,
    label_path: str | os.PathLike | None = None,
    action: str = "raise",
) -> np.ndarray:
    """Check that audio and label durations agree: ``|size/sample_rate - n/label_rate| <= tol``.

    fairseq's ``verify_label_lengths`` only logs a warning for each mismatch; a wrong
    ``label_rate`` (100 instead of 50) or audio at the wrong rate then trains on misaligned
    targets (fairseq#5097). Here a mismatch is an error by default.

    Args:
        sizes: (N,) audio lengths in samples.
        label_lengths: (N,) number of labels of the same utterances.
        sample_rate: audio rate in Hz.
        label_rate: label rate in Hz (frames per second); a negative rate (sequence labels)
            skips the check.
        tol: tolerance in seconds (fairseq: 0.1).
        names: (N,) utterance descriptions for messages, e.g. ``"train.tsv:12 (a/b.flac)"``.
        label_path: the label file, for messages.
        action: ``"raise"`` (default), ``"warn"`` (log, like fairseq) or ``"ignore"``.

    Returns:
        (M,) positions (into ``sizes``) of the mismatched utterances.

    Raises:
        DataError: with ``action="raise"``, when any utterance mismatches; the message names the
            first ones (utterance, both durations, the label rate the labels imply).
        ValueError: an unknown ``action``, or ``sizes`` and ``label_lengths`` differ in length.
    """
    if action not in ("raise", "warn", "ignore"):
        raise ValueError(f"check_lengths: action must be raise, warn or ignore, got {action!r}")
    sizes = np.asarray(sizes, dtype=np.float64)
    label_lengths = np.asarray(label_lengths, dtype=np.float64)
    if sizes.shape != label_lengths.shape:
        raise ValueError(f"check_lengths: {sizes.shape} sizes vs {label_lengths.shape} lengths")
    if label_rate < 0 or action == "ignore":
        return np.zeros(0, dtype=np.int64)
    audio_sec = sizes / sample_rate
    label_sec = label_lengths / label_rate
    bad = np.flatnonzero(np.abs(audio_sec - label_sec) > tol)
    if len(bad) == 0:
        return bad
    where = f" in {label_path}" if label_path is not None else ""
    details = []
    for i in bad[:3]:
        name = names[i] if names is not None else f"utterance {i}"
        implied = label_lengths[i] / audio_sec[i] if audio_sec[i] > 0 else float("inf")
        details.append(
            f"{name}: audio {audio_sec[i]:.3f} s ({int(sizes[i])} samples at {sample_rate:g} Hz)"
            f" vs {int(label_lengths[i])} labels = {label_sec[i]:.3f} s at label_rate "
            f"{label_rate:g} Hz (the labels imply about {implied:.1f} Hz)"
        )
    message = (
        f"audio and label durations differ by more than {tol:g} s for {len(bad)} of "
        f"{len(sizes)} utterance(s){where}: "
        + "; ".join(details)
        + ". Check label_rate (50 for labels from HuBERT features, 100 for MFCC labels), that "
        "the audio is at the task's sample_rate, and that the label lines follow the manifest "
        "order"
    )
    if action == "raise":
        raise DataError(message)
    logger.warning(message)
    return bad
