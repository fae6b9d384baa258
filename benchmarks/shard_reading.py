"""Sharded reading against per-file reading of the same small utterances (issue 10 goal: >= 2x).

Cuts the real speech of the shared data into ``--seconds``-long 16 kHz WAV files (small files, the
case shards exist for), writes a train list for them, packs it with
:func:`speechkit.data.shards.pack_train_list`, then decodes every utterance both ways, the two
passes interleaved ``--repeats`` times:

* **files**: one :func:`speechkit.data.audio.read_audio` per listed file, in a random order (a
  training epoch's order), as the list-based datasets read them;
* **shards**: :class:`speechkit.data.shards.ShardReader` over each shard in turn, each sample's
  audio decoded from its tar member with :func:`speechkit.data.shards.decode_audio_bytes`, as
  :class:`speechkit.data.shard_dataset.ShardDataset` reads them.

The decoded arrays of the two passes are compared once (they must be equal) before any timing.

``--cache cold`` (default) evicts every file of both layouts from the page cache before each pass
(``posix_fadvise(POSIX_FADV_DONTNEED)``), so the data comes from the disk, as on a cluster whose
file system cannot cache a corpus; ``--cache warm`` reads from memory (the CPU cost of opening
and parsing alone). Run from the repository root::

    .venv/bin/python benchmarks/shard_reading.py [--files 2000] [--seconds 1.0] \\
        [--repeats 3] [--cache cold|warm] [--data DIR] [--workdir DIR] [--quick]

JSON line: utterances/s read from shards (median over repeats) vs per-file reading.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from _report import device_label, log, report

from speechkit.cli.paths import find_shared_data
from speechkit.data.audio import read_audio
from speechkit.data.lists import read_train_list
from speechkit.data.shards import (
    ShardIndex,
    ShardReader,
    decode_audio_bytes,
    pack_train_list,
    parse_size,
)

TRAIN_LIST = "lists/librispeech_test_other_train_all.txt"
SAMPLE_RATE = 16000


def write_small_files(data: Path, out: Path, count: int, seconds: float) -> Path:
    """Cut the shared train list's speech into ``count`` WAVs of ``seconds``; return the list."""
    rows = read_train_list(data / TRAIN_LIST, data)
    size = int(seconds * SAMPLE_RATE)
    pieces = []
    for speaker, path in rows:
        wav = read_audio(path)
        pieces += [(speaker, wav[i : i + size]) for i in range(0, len(wav) - size + 1, size)]
    if not pieces:
        raise SystemExit(f"no {seconds} s piece in {data / TRAIN_LIST}")
    lines = []
    (out / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        speaker, piece = pieces[i % len(pieces)]
        rel = f"wav/{i:07d}.wav"
        sf.write(out / rel, piece, SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{speaker} {rel}\n")
    train_list = out / "train_list.txt"
    train_list.write_text("".join(lines))
    return train_list


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages only; no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_files(paths: list[Path], order: np.ndarray) -> list[np.ndarray]:
    return [read_audio(paths[i]) for i in order]


def read_shards(index: ShardIndex) -> list[np.ndarray]:
    out = []
    for i, shard in enumerate(index.shards):
        reader = ShardReader(index.shard_path(i), shard.samples, shard.bytes)
        for ref in reader:
            data = reader.read(ref)
            audio = next(v for k, v in data.items() if k != "json")
            out.append(decode_audio_bytes(audio, ref.where))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shard-size", default="64MB")
    p.add_argument("--cache", choices=("cold", "warm"), default="cold")
    p.add_argument("--data", default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--workdir", default=None, help="where the files and shards go (a temp dir)")
    p.add_argument("--quick", action="store_true", help="300 files, 2 repeats")
    args = p.parse_args()
    if args.quick:
        args.files, args.repeats = 300, 2
    data = find_shared_data(TRAIN_LIST, args.data)
    if data is None:
        raise SystemExit(f"shared data with {TRAIN_LIST} not found (--data)")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        log(f"writing {args.files} files of {args.seconds} s under {work}")
        train_list = write_small_files(data, work, args.files, args.seconds)
        index = pack_train_list(
            train_list, work, work / "shards", shard_size=parse_size(args.shard_size)
        )
        file_paths = [Path(path) for _, path in read_train_list(train_list, work)]
        shard_paths = [index.shard_path(i) for i in range(len(index.shards))]
        os.sync()  # dirty pages cannot be evicted: write everything out first
        identity = np.arange(len(file_paths))
        for a, b in zip(read_files(file_paths, identity), read_shards(index), strict=True):
            if not np.array_equal(a, b):
                raise SystemExit("shards and files decode to different audio")
        log(f"{len(file_paths)} utterances in {len(shard_paths)} shard(s); content identical")
        rng = np.random.default_rng(0)
        files_rate, shards_rate = [], []
        for r in range(args.repeats):
            for kind in ("files", "shards") if r % 2 == 0 else ("shards", "files"):
                if args.cache == "cold":
                    evict(file_paths + shard_paths)
                start = time.perf_counter()
                if kind == "files":
                    n = len(read_files(file_paths, rng.permutation(len(file_paths))))
                    files_rate.append(n / (time.perf_counter() - start))
                else:
                    n = len(read_shards(index))
                    shards_rate.append(n / (time.perf_counter() - start))
            log(f"repeat {r}: files {files_rate[-1]:.0f} utt/s, shards {shards_rate[-1]:.0f} utt/s")
    report(
        "shard_reading",
        device_label(),
        {
            "files": args.files,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "cache": args.cache,
            "shards": len(shard_paths),
            "files_utt_per_s": [round(x) for x in files_rate],
            "shards_utt_per_s": [round(x) for x in shards_rate],
        },
        statistics.median(shards_rate),
        "utterances/s (higher is better)",
        "per-file read_audio of the same utterances in a random order",
        statistics.median(files_rate),
    )


if __name__ == "__main__":
    main()
