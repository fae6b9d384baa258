"""Tar shards (speechkit.data.shards, speechkit.data.shard_dataset, speechkit.cli.pack_shards)
on real recordings from shared/data: packing, round trip over 2 ranks x 2 DataLoader workers,
reproducible shuffling, resume at a position, and clear errors for bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import speechkit.data.shard_dataset as shard_dataset
from speechkit.cli.pack_shards import main as pack_main
from speechkit.data.audio import read_audio
from speechkit.data.hubert_dataset import HubertDataset
from speechkit.data.labels import LabelDictionary
from speechkit.data.shard_dataset import (
    HubertItems,
    ShardDataset,
    SpeakerItems,
    batched,
    interleave_counts,
    make_shard_loader,
    next_turns,
)
from speechkit.data.shards import ShardIndex, pack_manifest, pack_train_list, parse_size
from speechkit.data.speaker_dataset import SpeakerTrainDataset
from speechkit.errors import ConfigError, DataError

SV_LIST = "lists/librispeech_test_other_train_all.txt"  # 100 utterances of 10 speakers
SV_SHARD = 3_000_000  # about 9 shards
NUM_MANIFEST = 24
NUM_UNITS = 50


@pytest.fixture(scope="module")
def sv_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sv") / "shards"
    pack_train_list(shared_data / SV_LIST, shared_data, out, shard_size=SV_SHARD)
    return out


@pytest.fixture(scope="module")
def hubert_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first NUM_MANIFEST entries of the shared manifest, 50 Hz labels and a dictionary."""
    d = tmp_path_factory.mktemp("hubert")
    lines = (shared_data / "lists/pretrain_manifest.tsv").read_text().splitlines()
    (d / "train.tsv").write_text("\n".join([str(shared_data)] + lines[1 : NUM_MANIFEST + 1]) + "\n")
    rng = np.random.default_rng(0)
    km = []
    for line in lines[1 : NUM_MANIFEST + 1]:
        frames = int(line.split("\t")[1]) // 320
        km.append(" ".join(map(str, rng.integers(0, NUM_UNITS, frames))))
    (d / "train.km").write_text("\n".join(km) + "\n")
    (d / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(NUM_UNITS)))
    out = d / "shards"
    pack_manifest(d / "train.tsv", out, [d / "train.km"], [50], shard_size=1_500_000)
    return {"dir": d, "shards": out}


def rank_order(ds: ShardDataset, num_workers: int) -> list:
    """This rank's items as the DataLoader returns them: workers round-robin, worker 0 first."""
    streams = [list(ds.iter_worker(w, num_workers)) for w in range(num_workers)]
    out, pos = [], [0] * num_workers
    while any(p < len(s) for p, s in zip(pos, streams)):
        for w, s in enumerate(streams):
            if pos[w] < len(s):
                out.append(s[pos[w]])
                pos[w] += 1
    return out


def test_parse_size_and_interleave() -> None:
    assert parse_size("1GB") == 10**9
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("2.5k") == 2500
    assert parse_size(4096) == 4096
    with pytest.raises(ConfigError, match="expected bytes like 1GB"):
        parse_size("lots")
    # worker 0 has 1 item, worker 1 has 3: order w0, w1, w1, w1
    assert interleave_counts([1, 3], 0) == [0, 0]
    assert interleave_counts([1, 3], 1) == [1, 0]
    assert interleave_counts([1, 3], 3) == [1, 2]
    assert interleave_counts([4, 2, 3], 7) == [3, 2, 2]
    assert interleave_counts([4, 2, 3], 100) == [4, 2, 3]
    assert interleave_counts([0, 5], 2) == [0, 2]
    assert next_turns([4, 2, 3], [0, 0, 0]) == [0, 1, 2]
    assert next_turns([4, 2, 3], [1, 0, 0]) == [1, 2, 0]
    assert next_turns([4, 2, 3], [3, 2, 2]) == [2, 0, 1]  # worker 1 is exhausted
    assert next_turns([4, 2, 3], [3, 2, 3]) == [0, 1, 2]


def test_pack_train_list_index(sv_shards: Path, shared_data: Path) -> None:
    index = ShardIndex.load(sv_shards)
    listed = [line.split() for line in (shared_data / SV_LIST).read_text().splitlines()]
    assert index.kind == "speaker" and index.num_samples == len(listed) == 100
    assert len(index.shards) >= 6
    assert index.speakers == sorted({s for s, _ in listed})
    for i, info in enumerate(index.shards):
        assert info.bytes == index.shard_path(i).stat().st_size
        assert info.bytes <= SV_SHARD + tarfile.RECORDSIZE
    with tarfile.open(index.shard_path(0)) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(names[0]).read())
        wav = tar.extractfile(names[1]).read()
    assert names[:2] == ["000000000.json", "000000000.wav"]
    assert meta["speaker"] == listed[0][0] and meta["path"] == listed[0][1]
    assert wav == (shared_data / listed[0][1]).read_bytes()  # the file's bytes as stored


def test_round_trip_two_ranks_two_workers(sv_shards: Path, shared_data: Path) -> None:
    """Every utterance exactly once per epoch over 2 ranks x 2 real DataLoader workers, with the
    audio read_audio gives for the file, in the order rank_order predicts."""
    seen = []
    for rank in range(2):
        ds = ShardDataset(sv_shards, rank=rank, world_size=2, buffer_size=6, seed=3)
        ds.set_epoch(2)
        got = list(make_shard_loader(ds, num_workers=2))
        assert [s["key"] for s in got] == [s["key"] for s in rank_order(ds, 2)]
        assert len(got) == len(ds)
        for s in got:
            expected = read_audio(shared_data / s["meta"]["path"], 16000, resample=False)
            np.testing.assert_array_equal(s["audio"].numpy(), expected)
        seen += [s["index"] for s in got]
    assert sorted(seen) == list(range(100))


def test_shuffling_is_reproducible(sv_shards: Path) -> None:
    def order(epoch: int, seed: int = 1, shuffle: bool = True, workers: int = 2) -> list[int]:
        ds = ShardDataset(sv_shards, buffer_size=10, seed=seed, shuffle=shuffle)
        ds.set_epoch(epoch)
        return [s["index"] for s in rank_order(ds, workers)]

    first = order(1)
    assert sorted(first) == list(range(100))
    assert order(1) == first  # same (seed, epoch): same order
    second = order(2)
    assert second != first and sorted(second) == sorted(first)  # reshuffled every epoch
    assert order(1, seed=2) != first
    ds = ShardDataset(sv_shards, seed=1)
    assert list(ds.shard_order(1)) != list(ds.shard_order(2))  # per-epoch shard order
    assert order(1, shuffle=False, workers=1) == list(range(100))  # archive order


@pytest.mark.parametrize("start", [0, 1, 7, 20, 35, 41])  # after 32 worker 1 is exhausted
def test_resume_equals_tail_of_epoch(sv_shards: Path, monkeypatch, start: int) -> None:
    ds = ShardDataset(sv_shards, rank=1, world_size=2, buffer_size=8, seed=5, equal_ranks=True)
    ds.set_epoch(3)
    full = [(s["key"], s["audio"]) for s in rank_order(ds, 2)]
    decoded = []
    real = shard_dataset.decode_audio_bytes
    monkeypatch.setattr(
        shard_dataset,
        "decode_audio_bytes",
        lambda data, where, *a: decoded.append(where) or real(data, where, *a),
    )
    ds.set_epoch(3, start=start)
    resumed = [(s["key"], s["audio"]) for s in rank_order(ds, 2)]
    assert [k for k, _ in resumed] == [k for k, _ in full[start:]]
    for (_, a), (_, b) in zip(resumed, full[start:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(decoded) == len(full) - start  # skipped samples are never decoded


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_resume_through_dataloader_and_equal_ranks(sv_shards: Path) -> None:
    """Real DataLoader workers: a resumed loader (round-robin restarting at worker 0) continues
    the interrupted order, also after a worker ran out (rank 1, epoch 4: worker 0 has 19 items,
    worker 1 22, so from item 38 on only worker 1 is left)."""
    lengths = []
    for rank, workers, starts in ((0, 3, [13]), (1, 2, [13, 39])):
        ds = ShardDataset(sv_shards, rank=rank, world_size=2, buffer_size=8, equal_ranks=True)
        ds.set_epoch(4)
        lengths.append(len(ds))
        full = [s["key"] for s in make_shard_loader(ds, num_workers=workers)]
        assert len(full) == len(ds) and full == [s["key"] for s in rank_order(ds, workers)]
        for start in starts:
            ds.set_epoch(4, start=start)
            assert [s["key"] for s in make_shard_loader(ds, num_workers=workers)] == full[start:]
    assert lengths[0] == lengths[1] == min(ds.rank_items(4, r) for r in range(2)) < 50
    with pytest.raises(ConfigError, match="resume position 999 is outside"):
        ds.set_epoch(4, start=999)


def test_speaker_items_equal_list_dataset(sv_shards: Path, shared_data: Path) -> None:
    index = ShardIndex.load(sv_shards)
    make = SpeakerItems.from_index(index, max_frames=100)
    ds = ShardDataset(index, make_item=make, buffer_size=4, seed=7)
    ds.set_epoch(2)
    items = list(itertools.islice(ds.iter_worker(0, 1), 10))
    rows = [line.split() for line in (shared_data / SV_LIST).read_text().splitlines()]
    ref = SpeakerTrainDataset([(s, str(shared_data / p)) for s, p in rows], max_frames=100, seed=7)
    ref.set_epoch(2)
    for item in items:
        expected = ref[[int(item["id"][0])]]
        assert item["label"] == expected["label"]
        torch.testing.assert_close(item["audio"], expected["audio"], rtol=0, atol=0)
    batch = next(batched(items, 4, ref.collater))
    assert batch["audio"].shape == (4, 1, 100 * 160 + 240)


def test_hubert_items_equal_manifest_dataset(hubert_data: dict) -> None:
    d = hubert_data["dir"]
    index = ShardIndex.load(hubert_data["shards"])
    assert index.kind == "manifest" and index.label_streams == ["km"]
    assert index.num_samples == NUM_MANIFEST and len(index.shards) >= 3
    sizes = [int(line.split("\t")[1]) for line in (d / "train.tsv").read_text().splitlines()[1:]]
    assert index.total_audio_samples == sum(sizes)
    dictionary = LabelDictionary.load(d / "dict.km.txt")
    ds = ShardDataset(index, make_item=HubertItems([dictionary]), buffer_size=5)
    ref = HubertDataset(d / "train.tsv", [d / "train.km"], 50, [dictionary], min_sample_size=None)
    items = rank_order(ds, 2)
    assert sorted(i["id"] for i in items) == list(range(NUM_MANIFEST))
    for item in items:
        expected = ref[item["id"]]  # no filtering: key == manifest entry
        torch.testing.assert_close(item["source"], expected["source"], rtol=0, atol=0)
        torch.testing.assert_close(item["label_list"][0], expected["label_list"][0])
    batch = ref.collater(items[:3])
    assert batch["net_input"]["source"].shape[0] == 3


def test_cli_packs_manifest_reproducibly(hubert_data: dict, tmp_path: Path, capsys) -> None:
    d = hubert_data["dir"]
    argv = ["--manifest", str(d / "train.tsv"), "--labels", str(d / "train.km")]
    argv += ["--label-rates", "50", "--shard-size", "1.5MB", str(tmp_path / "a")]
    assert pack_main(argv) == 0
    assert "24 samples in" in capsys.readouterr().out
    for a in sorted((tmp_path / "a").glob("*.tar")):  # the same input packs to the same bytes
        assert a.read_bytes() == (hubert_data["shards"] / a.name).read_bytes()
    digest = ShardIndex.load(tmp_path / "a").sha256  # the index digest a checkpoint keeps
    assert digest == hashlib.sha256((tmp_path / "a" / "shards.json").read_bytes()).hexdigest()
    assert digest == ShardIndex.load(hubert_data["shards"]).sha256
    assert pack_main(argv) == 2  # an existing index is not replaced without --overwrite
    assert "shards.json exists" in capsys.readouterr().err
    argv[-2] = "4MB"  # fewer, larger shards: the old ones not in the new index are removed
    assert pack_main([*argv, "--overwrite"]) == 0
    index = ShardIndex.load(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").glob("*.tar")) == [s.name for s in index.shards]
    assert len(index.shards) < len(ShardIndex.load(hubert_data["shards"]).shards)
    assert index.sha256 != digest  # repacked: a mid-epoch resume position no longer applies


def test_bad_list_line_and_mismatched_labels(
    shared_data: Path, hubert_data: dict, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "bad.txt"
    lines = (shared_data / SV_LIST).read_text().splitlines()[:3]
    bad.write_text("\n".join([lines[0], "ls367", lines[2]]) + "\n")
    argv = ["--train-list", str(bad), "--root", str(shared_data), str(tmp_path / "out")]
    assert pack_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("pack_shards: error: ")
        and f"{bad}:2: expected 'speaker_id relative/path.wav'" in err
    )
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written
    missing = tmp_path / "missing.txt"
    missing.write_text("ls1 no/such.wav\n")
    with pytest.raises(DataError, match=r"missing.txt: 1 listed file\(s\) not found.*line 1"):
        pack_train_list(missing, shared_data, tmp_path / "out2")
    d = hubert_data["dir"]
    short = tmp_path / "short.km"
    short.write_text("1 2 3\n")
    with pytest.raises(DataError, match="short.km has 1 lines but .*train.tsv has 24 entries"):
        pack_manifest(d / "train.tsv", tmp_path / "out3", [short])
    with pytest.raises(DataError, match="label_rate 100 Hz"):
        pack_manifest(d / "train.tsv", tmp_path / "out4", [d / "train.km"], [100])


def test_failure_while_packing_leaves_no_partial_output(shared_data: Path, tmp_path: Path) -> None:
    import soundfile as sf

    sf.write(tmp_path / "8k.wav", np.zeros(8000, dtype=np.float32), 8000)
    lines = (shared_data / SV_LIST).read_text().splitlines()[:2]
    bad = tmp_path / "list.txt"
    bad.write_text("\n".join([*lines, f"ls1 {tmp_path / '8k.wav'}"]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(
        DataError, match=r"list.txt:3: .*8k.wav: sample rate is 8000 Hz, expected 16000"
    ):
        pack_train_list(bad, shared_data, out)
    assert list(out.iterdir()) == []  # the shard in progress (a hidden temporary) is removed


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_and_corrupt_shards(sv_shards: Path, tmp_path: Path) -> None:
    index = ShardIndex.load(sv_shards)
    # truncated (an interrupted copy): refused up front, naming the shard and both sizes
    trunc = _copy(sv_shards, tmp_path / "trunc")
    shard = trunc / index.shards[1].name
    os.truncate(shard, 1_000_000)
    with pytest.raises(DataError, match=rf"{shard.name}: shard is 1000000 bytes but .* records"):
        ShardDataset(trunc)
    # a corrupt header in the middle, size unchanged: tarfile alone would end quietly there
    bad = _copy(sv_shards, tmp_path / "header")
    shard = bad / index.shards[2].name
    with tarfile.open(shard) as tar:
        third = tar.getmembers()[4].offset  # header of the third sample's json
    with open(shard, "r+b") as f:
        f.seek(third + 148)  # the checksum field
        f.write(b"XXXXXX")
    ds = ShardDataset(bad, shuffle=False)
    with pytest.raises(
        DataError, match=rf"{shard.name}: bad tar header at byte {third} after sample 2"
    ):
        list(ds)
    # corrupt audio bytes: a decode error naming the shard, the key and the listed path
    noisy = _copy(sv_shards, tmp_path / "audio")
    shard = noisy / index.shards[0].name
    with tarfile.open(shard) as tar:
        wav = tar.getmembers()[1]
    with open(shard, "r+b") as f:
        f.seek(wav.offset_data)
        f.write(b"\0" * 64)  # the RIFF header
    ds = ShardDataset(noisy, shuffle=False)
    with pytest.raises(
        DataError, match=rf"{shard.name}:000000000 \(speech/.*\.wav\): cannot decode audio"
    ):
        list(ds)
    # an index that is not one
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "shards.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a speechkit shard index"):
        ShardDataset(tmp_path / "junk")
    with pytest.raises(ConfigError, match="shards for 99 ranks"):
        ShardDataset(sv_shards, rank=0, world_size=99)


def test_labels_of_unknown_units_are_errors(hubert_data: dict) -> None:
    small = LabelDictionary.dummy(10)  # the labels use units 0..49
    ds = ShardDataset(hubert_data["shards"], make_item=HubertItems([small]), shuffle=False)
    with pytest.raises(
        DataError, match=r"shard-000000.tar:000000000 \(speech/.*\): unit .* not in the dictionary"
    ):
        next(iter(ds))


def test_counter_sanity(sv_shards: Path) -> None:
    """Worker split: each shard is read by exactly one (rank, worker)."""
    ds = ShardDataset(sv_shards, world_size=2, rank=0)
    other = ShardDataset(sv_shards, world_size=2, rank=1)
    shards = [s for d in (ds, other) for w in range(3) for s in d.worker_shards(1, w, 3).tolist()]
    assert Counter(shards) == Counter(range(len(ShardIndex.load(sv_shards).shards)))
