"""HuBERT data pipeline on the real shared manifest: manifest/label/dictionary parsing, length
checks, crop/pad collation with label alignment, determinism across workers, max_tokens batches."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from speechkit.data import labels as labels_module
from speechkit.data.hubert_dataset import HubertDataset
from speechkit.data.labels import LabelDictionary, LabelFile, check_lengths
from speechkit.data.manifest import PackedStrings, read_manifest, write_manifest
from speechkit.errors import ConfigError, DataError

SR = 16000
K50, K100 = 20, 12


def frames_50hz(n: int) -> int:
    """HuBERT CNN frames (400-sample receptive field, stride 320)."""
    return (n - 400) // 320 + 1


def frames_100hz(n: int) -> int:
    """Kaldi MFCC frames (25 ms window, 10 ms shift, snip_edges)."""
    return 1 + (n - 400) // 160


@pytest.fixture(scope="module")
def manifest(shared_data):
    return read_manifest(shared_data / "lists/pretrain_manifest.tsv", root_override=shared_data)


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory, manifest):
    """Random frame-count-correct labels at 50 Hz and 100 Hz, plus dummy dictionaries."""
    d = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(7)
    parsed = {}
    for name, rate_frames, k in (("km50", frames_50hz, K50), ("km100", frames_100hz, K100)):
        rows = [rng.integers(0, k, rate_frames(int(n))) for n in manifest.sizes]
        (d / f"train.{name}").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
        (d / f"dict.{name}.txt").write_text("".join(f"{i} 1\n" for i in range(k)))
        parsed[name] = rows
    return d, parsed


@pytest.fixture(scope="module")
def dataset(manifest, label_dir):
    d, _ = label_dir
    return HubertDataset(
        manifest,
        [d / "train.km50", d / "train.km100"],
        [50, 100],
        [d / "dict.km50.txt", d / "dict.km100.txt"],
    )


# -- manifest ----------------------------------------------------------------------------------
def test_real_manifest_sizes_match_the_audio(manifest, shared_data):
    assert len(manifest) == 318 and manifest.root == shared_data
    for i in (0, 57, 150, 317):
        info = sf.info(str(shared_data / manifest.paths[i]))
        assert info.frames == manifest.sizes[i] and info.samplerate == SR
    assert manifest.where(3).endswith(f"pretrain_manifest.tsv:5 ({manifest.paths[3]})")


def test_manifest_root_is_relative_to_cwd_as_in_fairseq(tmp_path, monkeypatch, shared_data):
    (tmp_path / "lists").mkdir()
    path = tmp_path / "lists" / "m.tsv"
    write_manifest(path, "data_root", ["a/x.wav", "b/y.wav"], [16000, 32000])
    monkeypatch.chdir(tmp_path)
    m = read_manifest(path)
    assert m.audio_path(1).resolve() == (tmp_path / "data_root" / "b/y.wav")
    assert list(m.sizes) == [16000, 32000] and m.paths == ["a/x.wav", "b/y.wav"]
    assert read_manifest(path, root_override=shared_data).audio_path(0) == shared_data / "a/x.wav"


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"m.tsv: the manifest is empty"),
        ("/root\n", r"m.tsv: the manifest has a root but no entries"),
        ("/root\na.wav\t100\nb.wav 200\n", r"m.tsv:3: expected .*2 tab-separated fields.*got 1"),
        ("/root\na.wav\t100\t5\n", r"m.tsv:2: expected .*got 3"),
        ("/root\na.wav\t1e4\n", r"m.tsv:2: num_samples must be a non-negative integer.*'1e4'"),
        ("/root\na.wav\t10\n\nb.wav\t5\n", r"m.tsv:3: blank line between entries"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "m.tsv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_manifest(path)


def test_packed_strings():
    strings = ["speech/a/é.wav", "", "x" * 300, "b"]
    packed = PackedStrings(strings)
    assert [packed[i] for i in range(len(packed))] == strings and packed[-1] == "b"
    with pytest.raises(IndexError):
        packed[4]


# -- dictionary and label files ----------------------------------------------------------------
def test_label_dictionary_matches_fairseq_indexing(tmp_path):
    path = tmp_path / "dict.km.txt"
    path.write_text("5 10\n3 7\nfoo 1 #fairseq:overwrite\n")
    d = LabelDictionary.load(path)
    assert d.num_classes == 3 + 4 and len(d) == 7
    assert d.encode(["5", "3", "foo", "unseen", "5"]).tolist() == [4, 5, 6, 3, 4]
    dummy = LabelDictionary.dummy(500)
    assert dummy.num_classes == 504  # label_embs_concat rows of a 500-unit fairseq checkpoint
    assert dummy.encode(["0", "499", "500", "007", "-1", "12"]).tolist() == [4, 503, 3, 3, 3, 16]
    path.write_text("1 1\n2 1\n1 1\n")
    with pytest.raises(DataError, match=r"dict.km.txt:3: duplicate symbol '1' \(first on line 1\)"):
        LabelDictionary.load(path)
    path.write_text("1 1\n2\n")
    with pytest.raises(DataError, match=r"dict.km.txt:2: expected '<symbol> <count>'"):
        LabelDictionary.load(path)


def test_label_file_offsets_equal_naive_reading(tmp_path, monkeypatch, label_dir):
    d, parsed = label_dir
    lf = LabelFile(d / "train.km100")
    naive = (d / "train.km100").read_text().splitlines()
    assert len(lf) == len(naive) == 318
    assert all(lf.read_line(i) == naive[i] for i in range(len(naive)))
    assert lf.lengths.tolist() == [len(r) for r in parsed["km100"]]

    # odd layouts, scanned in tiny blocks so lines straddle block boundaries
    monkeypatch.setattr(labels_module, "_SCAN_BLOCK", 5)
    odd = tmp_path / "odd.km"
    odd.write_bytes(b"1 2 3\r\n\n  7   8\t9 \n10 11")
    lf = LabelFile(odd)
    assert [lf.read_line(i) for i in range(len(lf))] == ["1 2 3", "", "  7   8\t9 ", "10 11"]
    assert lf.lengths.tolist() == [3, 0, 3, 2]


def test_label_file_opens_once_per_process(label_dir, monkeypatch):
    d, _ = label_dir
    lf = LabelFile(d / "train.km50")
    opened = []

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return open(*args, **kwargs)

    monkeypatch.setattr(labels_module, "open", counting_open, raising=False)
    for i in range(0, 318, 3):
        lf.read_tokens(i)
    assert len(opened) == 1
    lf._pid = -1  # as seen from a forked worker: a new handle of its own
    lf.read_tokens(0)
    assert len(opened) == 2


def test_label_count_mismatch_names_both_files(manifest, label_dir, tmp_path):
    d, _ = label_dir
    short = tmp_path / "short.km"
    short.write_text("".join((d / "train.km50").read_text().splitlines(True)[:-3]))
    with pytest.raises(DataError) as err:
        HubertDataset(manifest, [short], 50, None)
    msg = str(err.value)
    assert f"{short} has 315 lines" in msg and "pretrain_manifest.tsv has 318 entries" in msg
    assert "INCLUDING entries dropped" in msg


def test_length_mismatch_names_the_utterance(manifest, label_dir, tmp_path, caplog):
    d, _ = label_dir
    with pytest.raises(DataError, match=r"label_rate 100 Hz \(the labels imply about 50\.0 Hz\)"):
        HubertDataset(manifest, [d / "train.km50"], 100, None)

    lines = (d / "train.km50").read_text().splitlines(True)
    bad = 40
    lines[bad] = " ".join(lines[bad].split()[:-10]) + "\n"  # 0.2 s short
    broken = tmp_path / "broken.km"
    broken.write_text("".join(lines))
    with pytest.raises(DataError) as err:
        HubertDataset(manifest, [broken], 50, None)
    msg = str(err.value)
    assert f"pretrain_manifest.tsv:{bad + 2} ({manifest.paths[bad]})" in msg
    assert "for 1 of 315 utterance(s)" in msg and str(broken) in msg

    with caplog.at_level(logging.WARNING):
        ds = HubertDataset(manifest, [broken], 50, None, length_check="warn")
    assert manifest.paths[bad] in caplog.text and len(ds) == 315


def test_check_lengths_tolerance():
    sizes = np.array([16000, 16000, 16000])
    bad = check_lengths(sizes, [50, 45, 55], SR, 50, tol=0.1, action="ignore")
    assert len(bad) == 0
    bad = check_lengths(sizes, [50, 45, 56], SR, 50, tol=0.1, action="warn")
    assert bad.tolist() == [2]  # 0.1 s off is allowed, 0.12 s is not


# -- items -------------------------------------------------------------------------------------
def test_filtering_keeps_label_alignment(dataset, manifest, label_dir):
    _, parsed = label_dir
    expected = np.flatnonzero(manifest.sizes >= 32000)
    assert len(dataset) == len(expected) == 315
    assert dataset.indices.tolist() == expected.tolist()
    for key in (0, 100, 314):
        entry = int(dataset.indices[key])
        labels = dataset.get_labels(key)
        assert labels[0].tolist() == (parsed["km50"][entry] + 4).tolist()
        assert labels[1].tolist() == (parsed["km100"][entry] + 4).tolist()


def test_getitem_reads_audio_and_normalises(dataset, manifest, shared_data):
    key = 5
    item = dataset[key]
    ref, _ = sf.read(str(shared_data / manifest.paths[int(dataset.indices[key])]), dtype="float32")
    assert item["id"] == key and item["source"].dtype == torch.float32
    np.testing.assert_array_equal(item["source"].numpy(), ref)
    dataset.normalize = True
    try:
        normed = dataset[key]["source"].double().numpy()
    finally:
        dataset.normalize = False
    ref64 = ref.astype(np.float64)
    np.testing.assert_allclose(
        normed, (ref64 - ref64.mean()) / np.sqrt(ref64.var() + 1e-5), atol=1e-4
    )


def test_wrong_sample_rate_is_an_error_unless_resampling(tmp_path, manifest, shared_data):
    wav, _ = sf.read(str(shared_data / manifest.paths[0]), dtype="float32")
    sf.write(tmp_path / "x8k.wav", wav[::2], 8000)
    n = len(wav) // 2
    write_manifest(tmp_path / "m.tsv", tmp_path, ["x8k.wav"], [n * 2])
    (tmp_path / "l.km").write_text(" ".join(["1"] * frames_50hz(n * 2)) + "\n")
    ds = HubertDataset(tmp_path / "m.tsv", [tmp_path / "l.km"], 50, None)
    with pytest.raises(DataError, match=r"m.tsv:2 \(x8k.wav\):.*x8k.wav: sample rate is 8000 Hz"):
        ds[0]
    ds = HubertDataset(tmp_path / "m.tsv", [tmp_path / "l.km"], 50, None, resample=True)
    assert abs(len(ds[0]["source"]) - 2 * n) <= 2


# -- collation ---------------------------------------------------------------------------------
def _check_label_crop(batch, items, starts, audio_size, label_dir, dataset, pad_audio):
    _, parsed = label_dir
    for stream, (name, rate) in enumerate((("km50", 50), ("km100", 100))):
        full = [parsed[name][int(dataset.indices[s["id"]])] + 4 for s in items]
        frame_starts = [int(round(s * rate / SR)) for s in starts]
        size = int(round(audio_size * rate / SR))
        if not pad_audio:
            size = min([size] + [len(f) - fs for f, fs in zip(full, frame_starts)])
        targets = batch["target_list"][stream]
        for b, (f, fs) in enumerate(zip(full, frame_starts)):
            want = f[fs : fs + size]
            assert targets[b, : len(want)].tolist() == want.tolist()
            assert (targets[b, len(want) :] == 1).all()  # padded with <pad> = 1
        assert batch["ntokens_list"][stream] == sum(
            len(f[fs : fs + size]) for f, fs in zip(full, frame_starts)
        )


def test_collater_crops_to_shortest_with_aligned_labels(dataset, label_dir):
    keys = [3, 120, 200, 310]
    dataset.set_epoch(2)
    items = [dataset[k] for k in keys]
    batch = dataset.collater(items)
    lengths = [len(s["source"]) for s in items]
    audio_size = min(lengths)
    source = batch["net_input"]["source"]
    assert source.shape == (4, audio_size) and not batch["net_input"]["padding_mask"].any()
    starts = batch["crop_starts"].tolist()
    assert starts == dataset.crop_starts(lengths, audio_size, keys)
    assert sum(s > 0 for s in starts) >= 2  # random starts (the shortest item starts at 0)
    for b, (s, start) in enumerate(zip(items, starts)):
        assert 0 <= start <= lengths[b] - audio_size
        assert torch.equal(source[b], s["source"][start : start + audio_size])
    _check_label_crop(batch, items, starts, audio_size, label_dir, dataset, False)
    assert batch["id"].tolist() == keys and batch["nsentences"] == 4
    assert batch["ntokens"] == batch["ntokens_list"][0]

    dataset.set_epoch(3)
    assert dataset.collater(items)["crop_starts"].tolist() != starts
    dataset.set_epoch(1)


def test_collater_max_sample_size_and_fixed_start(manifest, label_dir):
    d, _ = label_dir
    ds = HubertDataset(
        manifest,
        [d / "train.km50", d / "train.km100"],
        [50, 100],
        None,
        max_sample_size=40000,
        random_crop=False,
    )
    items = [ds[k] for k in (0, 1)]
    batch = ds.collater(items)
    assert batch["net_input"]["source"].shape == (2, 40000)
    assert batch["crop_starts"].tolist() == [0, 0]
    assert torch.equal(batch["net_input"]["source"][1], items[1]["source"][:40000])


def test_collater_pad_audio(manifest, label_dir):
    d, _ = label_dir
    ds = HubertDataset(
        manifest,
        [d / "train.km50", d / "train.km100"],
        [50, 100],
        [d / "dict.km50.txt", d / "dict.km100.txt"],
        pad_audio=True,
        max_sample_size=100000,
    )
    short = np.flatnonzero(ds.sizes < 100000)
    long = np.flatnonzero(ds.sizes > 100000)
    keys = [int(short[0]), int(short[-1]), int(short[len(short) // 2])]
    items = [ds[k] for k in keys]
    lengths = [len(s["source"]) for s in items]
    assert len(set(lengths)) == 3
    batch = ds.collater(items)
    audio_size = min(max(lengths), 100000)
    source, mask = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    assert source.shape == (3, audio_size)
    for b, n in enumerate(lengths):
        assert not mask[b, :n].any() and mask[b, n:].all()
        assert torch.equal(source[b, :n], items[b]["source"]) and (source[b, n:] == 0).all()
    _check_label_crop(batch, items, [0, 0, 0], audio_size, label_dir, ds, True)

    long_items = [ds[int(long[0])], ds[keys[0]]]  # the first is cropped to max_sample_size
    batch = ds.collater(long_items)
    start = int(batch["crop_starts"][0])
    assert batch["net_input"]["source"].shape == (2, 100000)
    assert torch.equal(
        batch["net_input"]["source"][0], long_items[0]["source"][start : start + 100000]
    )
    assert batch["net_input"]["padding_mask"][1, len(long_items[1]["source"]) :].all()
    _check_label_crop(batch, long_items, [start, 0], 100000, label_dir, ds, True)


def _loader_batches(dataset, batches, workers):
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=dataset.collater, num_workers=workers
    )
    return list(loader)


def test_same_batches_with_0_and_2_workers(dataset):
    batches = dataset.batches(max_tokens=300000, seed=3, epoch=2)[:4]
    dataset.set_epoch(2)
    a = _loader_batches(dataset, batches, 0)
    b = _loader_batches(dataset, batches, 2)
    for x, y in zip(a, b):
        assert torch.equal(x["net_input"]["source"], y["net_input"]["source"])
        assert torch.equal(x["crop_starts"], y["crop_starts"])
        assert all(torch.equal(t, u) for t, u in zip(x["target_list"], y["target_list"]))
    dataset.set_epoch(1)


# -- batching ----------------------------------------------------------------------------------
def test_batches_respect_max_tokens_and_cover_each_item_once(dataset):
    max_tokens = 600000
    cost = np.minimum(dataset.sizes, dataset.max_sample_size)
    batches = dataset.batches(max_tokens, seed=1, epoch=1)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(dataset)))
    assert all(len(b) * cost[b].max() <= max_tokens for b in batches)
    assert batches == dataset.batches(max_tokens, seed=1, epoch=1)  # resumable
    assert batches != dataset.batches(max_tokens, seed=1, epoch=2)

    # unshuffled: longest first, and greedy (the next item would not have fitted)
    ordered = dataset.batches(
        max_tokens, seed=1, epoch=1, required_batch_size_multiple=1, shuffle=False
    )
    flat = [i for b in ordered for i in b]
    assert np.all(np.diff(dataset.sizes[flat]) <= 0)
    for b, nxt in zip(ordered, ordered[1:]):
        assert (len(b) + 1) * max(cost[b].max(), cost[nxt[0]]) > max_tokens

    capped = dataset.batches(
        max_tokens, batch_size=5, seed=1, epoch=1, required_batch_size_multiple=1
    )
    assert max(len(b) for b in capped) == 5


def test_batches_required_multiple(dataset):
    batches = dataset.batches(1_400_000, seed=1, epoch=1, shuffle=False)
    sizes = [len(b) for b in batches]
    # a full batch is cut to a multiple of 8 unless it holds fewer than 8 items
    assert all(n % 8 == 0 or n < 8 for n in sizes[:-1]), sizes
    assert any(n >= 8 for n in sizes) and any(n < 8 for n in sizes)
    with pytest.raises(ConfigError, match=r"costs 250000 samples > max_tokens=200000"):
        dataset.batches(200000, seed=1, epoch=1)


def test_sequence_labels_are_kept_whole(tmp_path, manifest):
    n = 3
    write_manifest(tmp_path / "m.tsv", manifest.root, manifest.paths[:n], manifest.sizes[:n])
    (tmp_path / "w.ltr").write_text("H E L L O\nA\nB C\n")
    ds = HubertDataset(
        tmp_path / "m.tsv", [tmp_path / "w.ltr"], -1, [LabelDictionary(list("ABCEHLO"))]
    )
    batch = ds.collater([ds[k] for k in range(n)])
    assert batch["target_list"][0].tolist() == [
        [8, 7, 9, 9, 10],
        [4, 1, 1, 1, 1],
        [5, 6, 1, 1, 1],
    ]
    assert batch["target_lengths_list"][0].tolist() == [5, 1, 2] and batch["ntokens"] == 8
