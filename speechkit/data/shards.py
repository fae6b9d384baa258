"""Tar shards of a speech corpus: packing a train list or manifest, and reading them back.

A corpus of millions of small files is slow on a shared file system (one open and one metadata
lookup per file, per epoch). Following the webdataset layout that wespeaker uses for
VoxCeleb2-scale training (``wespeaker/tools/make_shard_list.py``,
``wespeaker/dataset/processor.py``), the utterances are packed into plain POSIX tar files of
about ``shard_size`` bytes each, read sequentially. This module is speechkit's own
implementation: shards are written with the standard library's ``tarfile`` (ustar format) and
read by parsing the 512-byte headers directly (faster for small members);
:mod:`speechkit.data.shard_dataset` streams the shards for training.

Layout of a shard folder::

    shards.json          the index (written last: its presence marks a complete folder)
    shard-000000.tar     samples 0 .. n0-1
    shard-000001.tar     ...

Each sample is two consecutive members with a common key, the zero-padded 0-based entry number
of the source list (``000000042``):

* ``<key>.json``: ``{"index": 42, "path": "<path as listed>", "num_samples": L,
  "sample_rate": 16000, "channels": 1}`` plus ``"speaker"`` (train list) or ``"labels"``
  (manifest: one label line per label file, as written there);
* ``<key>.<ext>``: the audio file's bytes as stored (``ext`` is its suffix: ``wav``, ``flac``).

``shards.json`` holds ``kind`` (``"speaker"`` or ``"manifest"``), the source, the sample rate,
per shard ``{"name", "samples", "bytes"}``, the total sample count, and ``speakers`` (sorted
unique ids, so labels are known without reading the shards) or, for a manifest,
``label_streams`` and ``total_audio_samples``.

Every shard and the index are written atomically (temporary file, fsync, rename:
:func:`speechkit.atomic.atomic_open`), and the tar headers carry no time stamps or owners, so the
same input packs to the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf

from speechkit.atomic import atomic_open, atomic_write_text
from speechkit.data.audio import decode_audio
from speechkit.data.labels import LabelFile, check_lengths
from speechkit.data.lists import check_files_exist, read_list_fields
from speechkit.data.manifest import read_manifest
from speechkit.errors import ConfigError, DataError

__all__ = [
    "INDEX_NAME",
    "SampleRef",
    "ShardIndex",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "decode_audio_bytes",
    "pack_manifest",
    "pack_train_list",
    "parse_size",
    "read_member_bytes",
]

logger = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
FORMAT = "speechkit-shards"
VERSION = 1
KEY_DIGITS = 9
_BLOCK = tarfile.BLOCKSIZE
_END_BYTES = 2 * _BLOCK
_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")


def parse_size(text: str | int) -> int:
    """``"1GB"`` -> 1_000_000_000 bytes; ``"512MiB"``, ``"64k"``, ``"2.5G"``, ``4096`` also work
    (decimal units, ``i`` for binary ones).

    Raises:
        ConfigError: not a positive size.
    """
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ConfigError(f"shard size {text!r}: expected bytes like 1GB, 500MB, 64MiB, 4096")
        power = " KMGT".index(m.group(2).upper() or " ")
        value = int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)
    if value < 1:
        raise ConfigError(f"shard size {text!r}: must be at least 1 byte")
    return value


def _member_bytes(size: int) -> int:
    """Bytes a member of ``size`` data bytes takes in a tar: header + data padded to 512."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


# -- index ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    """One shard of an index: file ``name`` (in the index's folder), ``samples``, ``bytes``."""

    name: str
    samples: int
    bytes: int


@dataclass
class ShardIndex:
    """The parsed ``shards.json`` of a shard folder.

    Attributes:
        folder: the folder holding the index and the shards.
        kind: ``"speaker"`` (a train list) or ``"manifest"`` (a fairseq manifest).
        shards: the shards in packing order.
        sample_rate: rate in Hz of every packed file.
        speakers: sorted unique speaker ids (``kind="speaker"``).
        label_streams: names of the label streams (``kind="manifest"``), e.g. ``["km"]``.
        total_audio_samples: sum of the samples of all entries (``kind="manifest"``).
        source: the packed list or manifest, as given to the packer.
        sha256: hex SHA-256 of the ``shards.json`` bytes (set by :meth:`load` and
            :meth:`write`; ``""`` for an index not yet written). It changes when the folder
            is packed again with another shard size or from another list or path, and not when
            the folder is copied: a training checkpoint keeps it to refuse resuming its
            mid-epoch position in another pack.
    """

    folder: Path
    kind: str
    shards: list[ShardInfo]
    sample_rate: int
    speakers: list[str] = field(default_factory=list)
    label_streams: list[str] = field(default_factory=list)
    total_audio_samples: int | None = None
    source: str = ""
    sha256: str = field(default="", compare=False, repr=False)

    @property
    def path(self) -> Path:
        return self.folder / INDEX_NAME

    @property
    def num_samples(self) -> int:
        """Number of samples (utterances) in all shards."""
        return sum(s.samples for s in self.shards)

    def shard_path(self, i: int) -> Path:
        return self.folder / self.shards[i].name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "source": self.source,
            "sample_rate": self.sample_rate,
            "num_samples": self.num_samples,
            "num_shards": len(self.shards),
            "shards": [
                {"name": s.name, "samples": s.samples, "bytes": s.bytes} for s in self.shards
            ],
        }
        if self.kind == "speaker":
            out["speakers"] = self.speakers
        else:
            out["label_streams"] = self.label_streams
            out["total_audio_samples"] = self.total_audio_samples
            out["total_hours"] = round((self.total_audio_samples or 0) / self.sample_rate / 3600, 3)
        return out

    def write(self) -> None:
        """Write ``folder/shards.json`` atomically (one line per shard); sets :attr:`sha256`."""
        data = self.to_json()
        shards = data.pop("shards")
        head = json.dumps(data, indent=1)[:-2]  # without the closing "\n}"
        lines = ",\n  ".join(json.dumps(s) for s in shards)
        text = f'{head},\n "shards": [\n  {lines}\n ]\n}}\n'
        atomic_write_text(self.path, text)
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardIndex:
        """Read an index: ``path`` is the shard folder or its ``shards.json``.

        Raises:
            DataError: the file is missing, not JSON, not a speechkit shard index, or a field
                is missing or of the wrong type (the message names the file and the field).
        """
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_NAME
        try:
            raw = path.read_bytes()
            data = json.loads(raw.decode("utf-8"))
        except FileNotFoundError as e:
            raise DataError(
                f"{path}: shard index not found; expected a folder written by pack_shards "
                f"(it holds {INDEX_NAME} and shard-*.tar)"
            ) from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read the shard index ({e})") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{path}: not a speechkit shard index (expected format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise DataError(f"{path}: index version {data.get('version')!r}, expected {VERSION}")
        try:
            shards = [
                ShardInfo(str(s["name"]), int(s["samples"]), int(s["bytes"]))
                for s in data["shards"]
            ]
            index = cls(
                folder=path.parent,
                kind=str(data["kind"]),
                shards=shards,
                sample_rate=int(data["sample_rate"]),
                speakers=[str(s) for s in data.get("speakers", [])],
                label_streams=[str(s) for s in data.get("label_streams", [])],
                total_audio_samples=data.get("total_audio_samples"),
                source=str(data.get("source", "")),
                sha256=hashlib.sha256(raw).hexdigest(),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: malformed shard index (field {e})") from e
        if index.kind not in ("speaker", "manifest"):
            raise DataError(f"{path}: kind {index.kind!r}, expected 'speaker' or 'manifest'")
        if not shards:
            raise DataError(f"{path}: the index lists no shards")
        return index

    def check_files(self) -> None:
        """Check that every shard exists with the size the index records (one ``stat`` each).

        Raises:
            DataError: a missing shard, or one whose size differs (truncated by an interrupted
                copy, or replaced); names the shard and both sizes.
        """
        for i, info in enumerate(self.shards):
            p = self.shard_path(i)
            try:
                size = p.stat().st_size
            except OSError as e:
                raise DataError(f"{p}: shard listed in {self.path} not found ({e.strerror})") from e
            if size != info.bytes:
                raise DataError(
                    f"{p}: shard is {size} bytes but {self.path} records {info.bytes}: the file "
                    "is truncated or was replaced; copy it again or re-run pack_shards"
                )


# -- writing -------------------------------------------------------------------------------------
class ShardWriter:
    """Write samples into tar shards of about ``shard_size`` bytes each.

    A new shard starts when the next sample would push the current one past ``shard_size``
    (a sample larger than ``shard_size`` gets a shard of its own). Each shard is written through
    :func:`speechkit.atomic.atomic_open`; after an error the shard being written is removed.

    Args:
        folder: output folder (created if needed).
        shard_size: target shard size in bytes.
        prefix: shard file names are ``<prefix>-000000.tar``, ...

    Raises:
        OutputError (from ``add``/``close``): the folder or a shard cannot be written.
    """

    def __init__(self, folder: str | os.PathLike, shard_size: int, prefix: str = "shard"):
        self.folder = Path(folder)
        self.shard_size = int(shard_size)
        self.prefix = prefix
        self.shards: list[ShardInfo] = []
        self._stack: ExitStack | None = None
        self._tar: tarfile.TarFile | None = None
        self._name = ""
        self._bytes = 0
        self._samples = 0

    def _open(self) -> None:
        self._name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._stack = ExitStack()
        f = self._stack.enter_context(
            atomic_open(self.folder / self._name, "wb", size_hint=self.shard_size)
        )
        self._tar = tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT)
        self._bytes = _END_BYTES
        self._samples = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._stack is not None
        self._tar.close()  # end-of-archive blocks; the file itself is closed by atomic_open
        self._stack.close()  # fsync + rename
        size = (self.folder / self._name).stat().st_size
        self.shards.append(ShardInfo(self._name, self._samples, size))
        self._tar = self._stack = None

    def add(self, key: str, members: Sequence[tuple[str, bytes]]) -> None:
        """Append one sample: ``members`` are ``(extension, data)`` pairs, written as
        ``<key>.<extension>`` in order."""
        cost = sum(_member_bytes(len(data)) for _, data in members)
        if self._tar is not None and self._samples and self._bytes + cost > self.shard_size:
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            self._tar.addfile(info, io.BytesIO(data))
        self._bytes += cost
        self._samples += 1

    def close(self) -> list[ShardInfo]:
        """Finish the last shard; returns every shard written."""
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the shard being written (its temporary file is removed); finished shards stay."""
        if self._stack is not None:
            exc = exc or DataError("packing aborted")
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            self._tar = self._stack = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)


class _Entry(NamedTuple):
    index: int
    path: Path  # the audio file
    where: str  # "list.txt:LINE" for messages
    meta: dict[str, Any]


def _read_audio_file(entry: _Entry, sample_rate: int) -> tuple[bytes, Any]:
    try:
        with open(entry.path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{entry.where}: cannot read {entry.path} ({e.strerror})") from e
    try:
        info = sf.info(io.BytesIO(data))
    except _DECODE_ERRORS as e:
        raise DataError(
            f"{entry.where}: {entry.path}: cannot read the audio header ({e}); expected an audio "
            "file libsndfile can decode (WAV, FLAC, OGG ...)"
        ) from e
    if info.samplerate != sample_rate:
        raise DataError(
            f"{entry.where}: {entry.path}: sample rate is {info.samplerate} Hz, expected "
            f"{sample_rate} Hz: convert the data first (sox IN -r {sample_rate} -c 1 OUT.wav) "
            "or pass --sample-rate"
        )
    if info.frames <= 0:
        raise DataError(f"{entry.where}: {entry.path}: the audio file holds no samples")
    return data, info


def _pack(
    entries: Sequence[_Entry],
    out_dir: str | os.PathLike,
    shard_size: int,
    sample_rate: int,
    index: ShardIndex,
    check_size: dict[int, int] | None = None,
    length_tol: float = 0.1,
) -> ShardIndex:
    # an old index goes first: no reader may take new shards for the old ones it lists
    index.path.unlink(missing_ok=True)
    with ShardWriter(out_dir, shard_size) as writer:
        for entry in entries:
            data, info = _read_audio_file(entry, sample_rate)
            if check_size is not None:
                listed = check_size[entry.index]
                if abs(info.frames - listed) > length_tol * sample_rate:
                    raise DataError(
                        f"{entry.where}: {entry.path} holds {info.frames} samples but the "
                        f"manifest says {listed}; regenerate the manifest (its sizes align the "
                        "labels)"
                    )
            meta = {
                "index": entry.index,
                **entry.meta,
                "num_samples": int(info.frames),
                "sample_rate": int(info.samplerate),
                "channels": int(info.channels),
            }
            ext = entry.path.suffix.lstrip(".").lower() or "wav"
            if ext == "json" or not ext.isalnum():
                raise DataError(f"{entry.where}: {entry.path}: unsupported audio file suffix")
            writer.add(
                _key(entry.index),
                [("json", json.dumps(meta, separators=(",", ":")).encode()), (ext, data)],
            )
    index.shards = writer.shards
    index.write()
    listed = {s.name for s in index.shards}
    for stale in index.folder.glob(f"{writer.prefix}-*.tar"):  # left by an earlier, larger run
        if stale.name not in listed:
            stale.unlink()
    logger.info(
        "%s: %d samples in %d shards (%s)",
        index.path,
        index.num_samples,
        len(index.shards),
        ", ".join(f"{s.name}: {s.samples}" for s in index.shards[:3])
        + (", ..." if len(index.shards) > 3 else ""),
    )
    return index


def _check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a folder that holds an index, unless ``overwrite``."""
    p = Path(out_dir) / INDEX_NAME
    if p.exists() and not overwrite:
        raise DataError(f"{p} exists: the folder already holds shards (pass overwrite to replace)")


def pack_train_list(
    train_list: str | os.PathLike,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    shard_size: int = 1_000_000_000,
    sample_rate: int = 16000,
    overwrite: bool = False,
) -> ShardIndex:
    """Pack a voxceleb_trainer train list (``speaker_id relative/path.wav`` lines) into shards.

    Samples keep the list order; sample ``i`` is the list's ``i``-th non-blank line, with
    ``"speaker"`` and ``"path"`` (as listed) in its JSON.

    Args:
        train_list: the list file.
        root: folder the listed paths are relative to.
        out_dir: output folder for the shards and ``shards.json``.
        shard_size: target bytes per shard (``parse_size`` reads ``"1GB"``).
        sample_rate: every file must have this rate (Hz).
        overwrite: replace an existing shard folder's index.

    Returns:
        The written index.

    Raises:
        DataError: a malformed line (``list:LINE``, expected format), missing audio files
            (all are checked first), an unreadable file, a wrong sample rate, an empty file, or
            an existing index without ``overwrite``.
        OutputError: the output cannot be written.
    """
    _check_out_dir(out_dir, overwrite)
    list_path = os.fspath(train_list)
    root = Path(os.path.abspath(root))
    rows = read_list_fields(list_path, (2,), "speaker_id relative/path.wav")
    entries = [
        _Entry(
            i, root / fields[1], f"{list_path}:{line}", {"speaker": fields[0], "path": fields[1]}
        )
        for i, (line, fields) in enumerate(rows)
    ]
    check_files_exist(list_path, ((line, str(e.path)) for (line, _), e in zip(rows, entries)))
    speakers = sorted({e.meta["speaker"] for e in entries})
    index = ShardIndex(
        Path(out_dir), "speaker", [], sample_rate, speakers=speakers, source=list_path
    )
    return _pack(entries, out_dir, shard_size, sample_rate, index)


def pack_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    label_files: Sequence[str | os.PathLike] = (),
    label_rates: Sequence[float] | None = None,
    root_override: str | os.PathLike | None = None,
    shard_size: int = 1_000_000_000,
    sample_rate: int = 16000,
    min_samples: int | None = None,
    max_samples: int | None = None,
    overwrite: bool = False,
) -> ShardIndex:
    """Pack a fairseq manifest (``root`` line, then ``relative/path<TAB>num_samples``) and its
    label files (one line per entry, e.g. ``train.km``) into shards.

    Sample ``i`` is manifest entry ``i`` (0-based, line ``i + 2``); its JSON holds ``"path"``,
    ``"num_samples"`` (decoded from the header) and ``"labels"``: one raw label line per label
    file, in the order given. Entries outside ``[min_samples, max_samples]`` are left out (as
    ``HubertDataset``'s ``min_sample_size``/``max_keep_size``; keys keep the entry numbers).

    Args:
        manifest: the ``.tsv`` file.
        out_dir: output folder.
        label_files: label files; stream names are their suffixes (``train.km`` -> ``km``).
        label_rates: labels per second of each file; when given, audio and label durations
            must agree within 0.1 s (``speechkit.data.labels.check_lengths``).
        root_override: replaces the manifest's root line.
        shard_size: target bytes per shard.
        sample_rate: every file must have this rate (Hz).
        min_samples, max_samples: keep entries with this many samples (``None``: no limit).
        overwrite: replace an existing shard folder's index.

    Raises:
        DataError: bad manifest or label file (file and line named), a label file whose line
            count differs from the entry count, mismatched durations, missing or unreadable
            audio, a wrong rate, a header length more than 0.1 s off the manifest's size, no
            entry left, or an existing index without ``overwrite``.
        OutputError: the output cannot be written.
    """
    _check_out_dir(out_dir, overwrite)
    m = read_manifest(manifest, root_override=root_override)
    labels = [LabelFile(p) for p in label_files]
    names = [lf.path.suffix.lstrip(".") or lf.path.name for lf in labels]
    if len(set(names)) != len(names):
        raise ConfigError(f"label files need distinct suffixes (stream names), got {names}")
    for lf in labels:
        if len(lf) != len(m):
            raise DataError(
                f"{lf.path} has {len(lf)} lines but {m.source} has {len(m)} entries; expected one "
                "label line per manifest entry, in manifest order"
            )
    keep = np.ones(len(m), dtype=bool)
    if min_samples is not None:
        keep &= m.sizes >= min_samples
    if max_samples is not None:
        keep &= m.sizes <= max_samples
    kept = np.flatnonzero(keep)
    if len(kept) == 0:
        raise DataError(
            f"{m.source}: no entry left with min_samples={min_samples}, max_samples={max_samples}"
        )
    if label_rates is not None:
        if len(label_rates) != len(labels):
            raise ConfigError(f"{len(label_rates)} label rates for {len(labels)} label files")
        for lf, rate in zip(labels, label_rates):
            check_lengths(
                m.sizes[kept],
                lf.lengths[kept],
                sample_rate,
                rate,
                label_path=lf.path,
                names=[m.where(int(i)) for i in kept],
            )
    entries = []
    for i in kept.tolist():
        meta: dict[str, Any] = {"path": m.paths[i]}
        if labels:
            meta["labels"] = [lf.read_line(i) for lf in labels]
        entries.append(_Entry(i, m.audio_path(i), m.where(i), meta))
    check_files_exist(os.fspath(m.source), ((m.line_number(e.index), str(e.path)) for e in entries))
    index = ShardIndex(
        Path(out_dir),
        "manifest",
        [],
        sample_rate,
        label_streams=names,
        total_audio_samples=int(m.sizes[kept].sum()),
        source=os.fspath(manifest),
    )
    return _pack(
        entries,
        out_dir,
        shard_size,
        sample_rate,
        index,
        check_size={int(i): int(m.sizes[i]) for i in kept},
    )


# -- reading -------------------------------------------------------------------------------------
class SampleRef(NamedTuple):
    """Where one sample's members are in a shard (header facts only, no data read).

    Attributes:
        shard: the shard file.
        key: the sample key (its entry number, zero-padded).
        members: ``((extension, data offset, size), ...)`` in archive order.
    """

    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]

    @property
    def where(self) -> str:
        return f"{self.shard}:{self.key}"


def _read_exact(f: Any, offset: int, size: int, where: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise DataError(f"{where}: unexpected end of the shard ({len(data)} of {size} bytes)")
    return data


def read_member_bytes(ref: SampleRef) -> dict[str, bytes]:
    """``{extension: data}`` of a sample, opening its shard (for samples of closed shards)."""
    with open(ref.shard, "rb") as f:
        return {ext: _read_exact(f, off, n, ref.where) for ext, off, n in ref.members}


def _ustar_member(block: bytes) -> tuple[str, int] | None:
    """``(name, size)`` of a regular file's ustar header block, or None when the block is not
    one (bad checksum or magic, another member type, a base-256 size or an undecodable name)."""
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"x", 8)
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        name = block[:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8")
    except ValueError:  # also UnicodeDecodeError
        return None
    if stored != sum(block) - sum(block[148:156]) + 8 * 32:
        return None
    if block[257:262] != b"ustar" or block[156:157] not in (b"0", b"\0"):
        return None
    return (f"{prefix}/{name}" if prefix else name), size


class ShardReader:
    """Iterate the samples of one shard in archive order.

    Iterating yields :class:`SampleRef` from the ustar headers alone (seeking over the data); :meth:`read` then reads a sample's members through the same open file, so reading
    each sample right after it is yielded is one sequential pass.

    Args:
        path: the shard.
        expected_samples: the sample count from the index; a different count is an error.
        expected_bytes: the size from the index, checked before reading (``None``: not checked).

    Raises:
        DataError (while iterating): a missing shard, a size that differs from the index, a
            corrupt header, a member that is not ``<key>.json`` followed by ``<key>.<audio>``,
            a truncated member, or a sample count that differs from the index. The message names
            the shard, the byte offset or key, and what was expected.
    """

    def __init__(
        self, path: str | os.PathLike, expected_samples: int, expected_bytes: int | None = None
    ):
        self.path = os.fspath(path)
        self.expected_samples = expected_samples
        self.expected_bytes = expected_bytes
        self._f: Any = None

    def _error(self, what: str) -> DataError:
        return DataError(f"{self.path}: {what}; re-copy the shard or re-run pack_shards")

    def __iter__(self) -> Iterator[SampleRef]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (closed in finally; read() uses it)
        except OSError as e:
            raise DataError(f"{self.path}: cannot open the shard ({e.strerror})") from e
        self._f = f
        try:
            if self.expected_bytes is not None:
                size = os.fstat(f.fileno()).st_size
                if size != self.expected_bytes:
                    raise self._error(
                        f"shard is {size} bytes but the index records {self.expected_bytes} "
                        "(truncated or replaced)"
                    )
            yield from self._samples(f)
        finally:
            self._f = None
            f.close()

    def _samples(self, f: Any) -> Iterator[SampleRef]:
        # The headers are parsed here rather than by ``tarfile``, whose per-member cost was the
        # largest part of reading a shard of small files (benchmarks/shard_reading.py). The
        # shards are plain ustar archives of regular files (ShardWriter), so a header is one
        # 512-byte block: name, octal size, checksum, type flag.
        count = 0
        pos = 0
        pending: tuple[str, int, int] | None = None
        while True:
            f.seek(pos)  # read() may have moved the shared file position
            block = f.read(_BLOCK)
            if len(block) < _BLOCK:
                raise self._error(
                    f"the file ends at byte {pos} after sample {count}, expected end of archive"
                )
            if block.count(0) == _BLOCK:  # the end-of-archive marker
                break
            member = _ustar_member(block)
            if member is None:
                raise self._error(
                    f"bad tar header at byte {pos} after sample {count}, expected a ustar header "
                    "of a regular file"
                )
            name, size = member
            data = pos + _BLOCK
            pos = data + -(-size // _BLOCK) * _BLOCK
            key, dot, ext = name.rpartition(".")
            if not dot or "/" in name:
                raise self._error(f"member {name!r}: expected '<key>.<extension>'")
            if pending is None:
                if ext != "json":
                    raise self._error(f"member {name!r}: expected '<key>.json' to start a sample")
                pending = (key, data, size)
                continue
            if key != pending[0]:
                raise self._error(
                    f"member {name!r} follows {pending[0]}.json: expected the audio member "
                    f"'{pending[0]}.<wav|flac|...>'"
                )
            count += 1
            yield SampleRef(self.path, key, (("json", pending[1], pending[2]), (ext, data, size)))
            pending = None
        if pending is not None:
            raise self._error(f"sample {pending[0]} has no audio member")
        if count != self.expected_samples:
            raise self._error(f"{count} samples but the index records {self.expected_samples}")

    def read(self, ref: SampleRef) -> dict[str, bytes]:
        """``{extension: data}`` of a sample yielded by the running iteration (same file)."""
        if self._f is None or ref.shard != self.path:
            return read_member_bytes(ref)
        return {ext: _read_exact(self._f, off, n, ref.where) for ext, off, n in ref.members}


def decode_audio_bytes(
    data: bytes,
    where: str,
    sample_rate: int | None = 16000,
    resample: bool = False,
    convert_hint: str = "",
    start: int = 0,
    frames: int = -1,
) -> np.ndarray:
    """Decode an audio file's bytes like :func:`speechkit.data.audio.read_audio` decodes a file.

    Same library (soundfile / libsndfile) and checks: float32 in [-1, 1], NaN/inf samples
    refused, several channels averaged to mono (with a WARNING), a rate other than
    ``sample_rate`` refused unless ``resample`` (soxr "HQ").

    Args:
        data: the bytes of a WAV/FLAC/OGG file.
        where: named in messages, e.g. ``"shard-000003.tar:000000042 (a/b.wav)"``.
        sample_rate: wanted rate in Hz (``None``: keep the file's).
        resample: resample another rate instead of raising.
        convert_hint: appended to the wrong-rate message (how to convert).
        start, frames: decode only ``frames`` samples (``-1``: to the end) from ``start``, both
            at the file's rate (only those are checked for NaN/inf).

    Returns:
        (L,) float32.

    Raises:
        DataError: undecodable bytes, no samples, NaN/inf samples, or a wrong rate.
    """
    return decode_audio(
        io.BytesIO(data),
        where,
        sample_rate,
        resample=resample,
        start=start,
        frames=frames,
        convert_hint=convert_hint,
    )
