"""Speaker-verification data pipeline: audio I/O, lists, sampler, datasets, augmentation.

Numbers are checked against independent computations: soundfile's int16 read, scipy's
polyphase resampler, ``np.resize`` for wrap padding, ``np.convolve`` for reverb, a float64
level computation for SNRs, an FFT peak for speed perturbation, and a literal transcription of
the reference sampler's window rule.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly
from torch.utils.data import DataLoader

from speechkit.data.audio import audio_info, read_audio, write_audio
from speechkit.data.augment import (
    REFERENCE_LEVEL_EPS,
    Augmenter,
    read_babble_list,
    read_noise_list,
    read_rir_list,
)
from speechkit.data.crop import crop_waveform, random_crop
from speechkit.data.lists import read_train_list, speaker_to_label
from speechkit.data.samplers import batch_by_size, speaker_balanced_batches
from speechkit.data.speaker_dataset import SpeakerEvalDataset, SpeakerTrainDataset
from speechkit.errors import ConfigError, DataError

TRAIN_LIST = "lists/librispeech_test_other_train_all.txt"
CROP_200 = 200 * 160 + 240


@pytest.fixture(scope="module")
def train_items(shared_data):
    return read_train_list(shared_data / TRAIN_LIST, shared_data)


@pytest.fixture(scope="module")
def speech(train_items):
    """A real LibriSpeech utterance, float32 at 16 kHz."""
    return read_audio(train_items[0][1])


def _db(x: np.ndarray, eps: float) -> float:
    """Independent float64 level: 10 log10(sum(x^2)/n + eps)."""
    x = np.asarray(x, dtype=np.float64)
    return 10.0 * np.log10(float(np.dot(x, x)) / x.size + eps)


# ------------------------------------------------------------------------------------------
# audio I/O
def test_read_audio_real_file_matches_int16(train_items):
    path = train_items[3][1]
    wav = read_audio(path)
    ints, rate = sf.read(path, dtype="int16")
    assert rate == 16000 and wav.dtype == np.float32 and wav.shape == ints.shape
    np.testing.assert_array_equal(wav, ints.astype(np.float64) / 32768.0)
    assert np.abs(wav).max() <= 1.0
    info = audio_info(path)
    assert (info.frames, info.sample_rate, info.channels) == (len(ints), 16000, 1)
    assert info.duration == pytest.approx(len(ints) / 16000)
    # partial read = the same samples as slicing the whole file
    np.testing.assert_array_equal(read_audio(path, start=1000, frames=500), wav[1000:1500])


@pytest.mark.parametrize("rate", [8000, 44100])
def test_read_audio_resamples_to_16k(tmp_path, speech, rate):
    x16 = speech[:48000].astype(np.float64)
    g = np.gcd(rate, 16000)
    x = resample_poly(x16, rate // g, 16000 // g)  # independent resampler (scipy)
    path = tmp_path / f"speech_{rate}.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    out = read_audio(path)
    assert out.dtype == np.float32
    assert abs(len(out) - len(x) * 16000 / rate) <= 1
    back = resample_poly(x, 16000 // g, rate // g)  # scipy's way back to 16 kHz
    n = min(len(out), len(back)) - 200
    corr = np.corrcoef(out[200:n], back[200:n])[0, 1]
    assert corr > 0.99
    if rate == 44100:  # nothing was lost above 8 kHz: close to the original 16 kHz signal
        assert np.corrcoef(out[200:n], x16[200:n])[0, 1] > 0.99
    with pytest.raises(DataError, match=f"{rate} Hz, expected 16000 Hz"):
        read_audio(path, resample=False)
    assert len(read_audio(path, sample_rate=None)) == len(x)


def test_read_audio_multichannel_mean(tmp_path, train_items):
    a = read_audio(train_items[0][1])[:16000]
    b = read_audio(train_items[50][1])[:16000]
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([a, b], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), (a.astype(np.float64) + b) / 2, atol=1e-7)
    assert read_audio(path, mono=False).shape == (16000, 2)
    assert audio_info(path).channels == 2


def test_read_audio_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(DataError, match="missing.wav: audio file not found"):
        read_audio(missing)
    with pytest.raises(DataError, match="missing.wav"):
        audio_info(missing)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match="empty.wav: the audio file holds no samples"):
        read_audio(empty)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match="garbage.wav: cannot decode audio"):
        read_audio(garbage)
    with pytest.raises(DataError, match="garbage.wav"):
        audio_info(garbage)


def test_write_audio_atomic_round_trip(tmp_path, speech):
    path = tmp_path / "out.wav"
    write_audio(path, speech[:8000], 16000)
    np.testing.assert_array_equal(read_audio(path), speech[:8000])  # int16 -> int16: exact
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        write_audio(path, np.array(["not audio"]), 16000)
    np.testing.assert_array_equal(read_audio(path), speech[:8000])  # old file untouched
    assert os.listdir(tmp_path) == ["out.wav"]  # no temporary left behind
    with pytest.raises(DataError, match="extension"):
        write_audio(tmp_path / "out.xyz", speech[:10], 16000)


# ------------------------------------------------------------------------------------------
# lists
def test_read_train_list_real(shared_data, train_items):
    assert len(train_items) == 100
    assert all(os.path.isabs(p) and os.path.isfile(p) for _, p in train_items)
    labels = speaker_to_label(s for s, _ in train_items)
    ids = sorted({s for s, _ in train_items})
    assert [labels[s] for s in ids] == list(range(10))
    assert read_train_list(shared_data / TRAIN_LIST, shared_data, check_exists=True) == train_items


def test_read_train_list_errors(tmp_path):
    bad = tmp_path / "bad_list.txt"
    bad.write_text("spk1 a.wav\n\nspk1 b.wav extra\n")
    with pytest.raises(DataError, match=r"bad_list.txt:3: expected 'speaker_id relative/path"):
        read_train_list(bad, tmp_path)
    empty = tmp_path / "empty_list.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="empty_list.txt: the list is empty"):
        read_train_list(empty, tmp_path)
    with pytest.raises(DataError, match="nope.txt: list file not found"):
        read_train_list(tmp_path / "nope.txt", tmp_path)
    (tmp_path / "a.wav").write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"s{i} {'a' if i == 2 else f'x{i}'}.wav\n" for i in range(8)))
    assert len(read_train_list(lst, tmp_path)) == 8  # no existence check by default
    with pytest.raises(DataError) as err:
        read_train_list(lst, tmp_path, check_exists=True)
    msg = str(err.value)
    assert "list.txt: 7 listed file(s) not found" in msg
    assert "line 1:" in msg and "x0.wav" in msg and "(7 in all)" in msg and "line 3:" not in msg


# ------------------------------------------------------------------------------------------
# samplers
def _reference_window_rule(labels, m, max_seg, bs, seed, epoch, world):
    """Literal transcription of research section 1.7 steps 1-4 (window = accepted count
    rounded down to a multiple of batch_size)."""
    g = torch.Generator().manual_seed(seed + epoch)
    buckets = {}
    for i in torch.randperm(len(labels), generator=g).tolist():
        buckets.setdefault(labels[i], []).append(i)
    groups, owner = [], []
    for spk in sorted(buckets):
        n = min(len(buckets[spk]), max_seg) // m * m
        for k in range(0, n, m):
            groups.append(buckets[spk][k : k + m])
            owner.append(spk)
    accepted, accepted_spk = [], []
    for gi in torch.randperm(len(groups), generator=g).tolist():
        window = len(accepted_spk) // bs * bs
        if owner[gi] not in accepted_spk[window:]:
            accepted.append(groups[gi])
            accepted_spk.append(owner[gi])
    total = len(accepted) // (bs * world) * (bs * world)
    return accepted[:total]


@pytest.mark.parametrize(
    "m,max_seg,bs,world",
    [(2, 500, 5, 1), (2, 6, 4, 2), (1, 3, 7, 1), (3, 500, 3, 3)],
)
def test_speaker_balanced_batches_properties(train_items, m, max_seg, bs, world):
    rng = np.random.default_rng(7)
    labels = [speaker_to_label(s for s, _ in train_items)[s] for s, _ in train_items]
    labels += list(10 + rng.integers(0, 25, size=300))  # uneven synthetic speakers
    batches = speaker_balanced_batches(labels, m, max_seg, bs, seed=3, epoch=1, world_size=world)
    assert len(batches) > 0 and len(batches) % world == 0
    seen = Counter()
    for batch in batches:
        assert len(batch) == bs
        spks = [labels[g[0]] for g in batch]
        assert len(set(spks)) == bs  # no speaker twice in a batch
        for group in batch:
            assert len(group) == m and len({labels[i] for i in group}) == 1
            seen.update(group)
    assert max(seen.values()) == 1  # every utterance at most once per epoch
    per_spk = Counter(labels[i] for i in seen)
    assert max(per_spk.values()) <= max_seg
    # same (seed, epoch): same batches; another epoch: another order
    assert batches == speaker_balanced_batches(labels, m, max_seg, bs, 3, 1, world)
    assert batches != speaker_balanced_batches(labels, m, max_seg, bs, 3, 2, world)
    flat = [g for b in batches for g in b]
    assert flat == _reference_window_rule(labels, m, max_seg, bs, 3, 1, world)


def test_speaker_balanced_batches_errors():
    with pytest.raises(ConfigError, match="no full batch"):
        speaker_balanced_batches([0, 0, 1, 1], 2, 500, batch_size=3, seed=0, epoch=0)
    with pytest.raises(ConfigError, match="n_per_speaker must be >= 1"):
        speaker_balanced_batches([0, 1], 0, 500, 1, 0, 0)


def _fairseq_batch_by_size_loop(indices, num_tokens, max_tokens, max_sentences, bsz_mult):
    """fairseq's ``batch_by_size_fn`` (data_utils_fast.pyx) transcribed: 0 means no limit."""
    batches, batch, sample_lens, sample_len = [], [], [], 0
    for idx in indices:
        sample_lens.append(num_tokens[idx])
        sample_len = max(sample_len, num_tokens[idx])
        n_tok = (len(batch) + 1) * sample_len
        full = len(batch) > 0 and (
            (max_sentences > 0 and len(batch) == max_sentences)
            or (max_tokens > 0 and n_tok > max_tokens)
        )
        if full:
            mod_len = max(bsz_mult * (len(batch) // bsz_mult), len(batch) % bsz_mult)
            batches.append(batch[:mod_len])
            batch = batch[mod_len:]
            sample_lens = sample_lens[mod_len:]
            sample_len = max(sample_lens) if sample_lens else 0
        batch.append(idx)
    if batch:
        batches.append(batch)
    return batches


def test_batch_by_size_matches_fairseq():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1000, 50000, size=400)
    order = np.argsort(-sizes, kind="stable")  # fairseq: longest first
    for max_tokens, max_sentences, mult in [
        (200_000, None, 1),
        (200_000, None, 8),
        (400_000, 6, 4),
        (None, 16, 1),
        (None, 10, 8),
    ]:
        got = batch_by_size(order, sizes, max_tokens, max_sentences, mult)
        want = _fairseq_batch_by_size_loop(
            order.tolist(), sizes.tolist(), max_tokens or 0, max_sentences or 0, mult
        )
        assert got == want, (max_tokens, max_sentences, mult)
        assert sorted(i for b in got for i in b) == list(range(400))
        if max_tokens is not None:
            assert all(max(sizes[b]) * len(b) <= max_tokens for b in got)
    # hand-checked: 5 items of cost 10, at most 40 padded -> a full batch of 4 is cut to the
    # multiple 3 and its 4th item carries over
    assert batch_by_size(range(5), [10] * 5, max_tokens=40, required_batch_size_multiple=3) == [
        [0, 1, 2],
        [3, 4],
    ]
    assert batch_by_size([2, 0, 1], [5, 5, 5], batch_size=2) == [[2, 0], [1]]
    with pytest.raises(ConfigError, match="item 1 costs 500 samples > max_tokens=100"):
        batch_by_size([0, 1], [10, 500], max_tokens=100)
    with pytest.raises(ConfigError, match="give max_tokens and/or batch_size"):
        batch_by_size([0], [10])
    with pytest.raises(ConfigError, match="limits must be >= 1"):
        batch_by_size([0], [10], batch_size=0)


# ------------------------------------------------------------------------------------------
# datasets
def _is_segment_of(crop: np.ndarray, wav: np.ndarray) -> bool:
    starts = np.flatnonzero(wav[: len(wav) - len(crop) + 1] == crop[0])
    return any(np.array_equal(wav[s : s + len(crop)], crop) for s in starts)


def test_crop_and_wrap_padding(tmp_path, speech):
    short = speech[5000:6000]
    expected = np.resize(short, CROP_200)  # np.resize repeats the array: an independent wrap
    np.testing.assert_array_equal(crop_waveform(short, CROP_200, 0), expected)
    np.testing.assert_array_equal(crop_waveform(speech, 1000, 300), speech[300:1300])
    with pytest.raises(ValueError):
        crop_waveform(speech, 1000, len(speech) - 10)
    path = tmp_path / "short.wav"
    sf.write(path, short, 16000, subtype="FLOAT")
    ds = SpeakerTrainDataset([("a", str(path))], max_frames=200, seed=0)
    np.testing.assert_array_equal(ds[[0]]["audio"][0].numpy(), expected)  # start is always 0


def test_train_dataset_crops_and_determinism(train_items):
    ds = SpeakerTrainDataset(train_items, max_frames=200, n_per_speaker=2, seed=5)
    assert ds.num_classes == 10 and ds.num_speakers == 10 and len(ds) == 100
    assert ds.num_samples == CROP_200
    item = ds[[0, 1]]
    assert item["audio"].shape == (2, CROP_200) and item["audio"].dtype == torch.float32
    assert item["label"] == ds.labels[0]
    for k, index in enumerate([0, 1]):
        assert _is_segment_of(item["audio"][k].numpy(), read_audio(train_items[index][1]))
    torch.testing.assert_close(ds[[0, 1]]["audio"], item["audio"], rtol=0, atol=0)
    full = SpeakerTrainDataset(train_items, max_frames=200, seed=5, partial_read=False)
    torch.testing.assert_close(full[[0, 1]]["audio"], item["audio"], rtol=0, atol=0)
    ds.set_epoch(1)
    assert not torch.equal(ds[[0, 1]]["audio"], item["audio"])
    with pytest.raises(ValueError, match="one speaker"):
        ds[[0, 50]]


def test_train_dataset_same_batches_with_any_worker_count(shared_data, train_items):
    aug = Augmenter(
        read_noise_list(shared_data / "lists/noise_list.txt", shared_data),
        read_rir_list(shared_data / "lists/rir_list.txt", shared_data),
        speed_perturb=True,
    )
    ds = SpeakerTrainDataset(train_items, max_frames=50, n_per_speaker=2, augment=aug, seed=2)
    ds.set_epoch(3)
    batches = speaker_balanced_batches(ds.labels, 2, 500, 4, seed=2, epoch=3)[:3]

    def run(workers):
        loader = DataLoader(ds, batch_sampler=batches, collate_fn=ds.collater, num_workers=workers)
        return list(loader)

    serial, parallel = run(0), run(2)
    assert len(serial) == 3
    for a, b in zip(serial, parallel):
        assert a["audio"].shape == (4, 2, 50 * 160 + 240)
        torch.testing.assert_close(a["audio"], b["audio"], rtol=0, atol=0)
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["id"], b["id"])
    # resuming at batch 2 gives batch 2 again
    resumed = DataLoader(ds, batch_sampler=batches[2:], collate_fn=ds.collater)
    torch.testing.assert_close(next(iter(resumed))["audio"], serial[2]["audio"], rtol=0, atol=0)


def test_eval_dataset_crops(tmp_path, train_items):
    paths = [train_items[0][1], train_items[1][1], train_items[0][1]]
    ds = SpeakerEvalDataset(paths, eval_frames=300, num_eval=10)
    assert len(ds) == 2 and ds.paths == paths[:2]
    n = 300 * 160 + 240
    for index in range(2):
        wav = read_audio(paths[index])
        padded = wav if len(wav) > n else np.resize(wav, n + 1)  # the reference's wrap padding
        crops = ds[index]["audio"].numpy()
        assert crops.shape == (10, n)
        for k in range(10):  # start of crop k = floor(k * (len - n) / 9)
            start = int(np.floor(k * (len(padded) - n) / 9.0))
            np.testing.assert_array_equal(crops[k], padded[start : start + n])
        np.testing.assert_array_equal(crops[-1], padded[-n:])
    wav = read_audio(paths[0])
    assert len(wav) < n < len(read_audio(paths[1]))  # both branches are covered
    batch = ds.collater([ds[0]])
    assert batch["audio"].shape == (1, 10, n) and batch["path"] == [paths[0]]

    whole = SpeakerEvalDataset(paths, eval_frames=0)
    one, two = whole[0], whole[1]
    assert one["audio"].shape == (1, len(wav))
    with pytest.raises(ValueError, match="collater_padded"):
        whole.collater([one, two])
    padded = whole.collater_padded([one, two])
    lengths = [len(wav), len(read_audio(paths[1]))]
    assert padded["lengths"].tolist() == lengths
    assert padded["audio"].shape == (2, 1, max(lengths))
    short = int(np.argmin(lengths))
    assert torch.all(padded["audio"][short, 0, min(lengths) :] == 0)
    torch.testing.assert_close(padded["audio"][0, 0, : lengths[0]], torch.from_numpy(wav))


# ------------------------------------------------------------------------------------------
# augmentation
@pytest.fixture(scope="module")
def noise_files(shared_data):
    return read_noise_list(shared_data / "lists/noise_list.txt", shared_data)


@pytest.fixture(scope="module")
def rir_files(shared_data):
    return read_rir_list(shared_data / "lists/rir_list.txt", shared_data)


def test_noise_and_rir_lists(tmp_path, shared_data, noise_files, rir_files):
    assert list(noise_files) == ["noise"] and len(noise_files["noise"]) == 6
    assert len(rir_files) == 13 and all(os.path.isfile(p) for p in rir_files)
    lst = tmp_path / "cats.txt"
    lst.write_text("music a.wav\nb.wav\nspeech c.wav\n")
    cats = read_noise_list(lst, tmp_path)
    assert {k: len(v) for k, v in cats.items()} == {"music": 1, "noise": 1, "speech": 1}
    lst.write_text("music a.wav\ntraffic b.wav\n")
    with pytest.raises(DataError, match="cats.txt:2: unknown noise category 'traffic'"):
        read_noise_list(lst, tmp_path)
    lst.write_text("a.wav b.wav c.wav\n")
    with pytest.raises(DataError, match="cats.txt:1"):
        read_rir_list(lst, tmp_path)
    cohort = read_babble_list(shared_data / "lists/cohort_list.txt", shared_data)
    assert len(cohort) == 211 and os.path.isfile(cohort[0])


def _achieved_snrs(aug, kind, train_items, eps, count=12):
    rng = np.random.default_rng(11)
    out = []
    for k in range(count):
        clean = random_crop(read_audio(train_items[k * 8][1]), CROP_200, rng)
        noisy = aug.apply(clean, kind, rng)
        assert noisy.shape == clean.shape and noisy.dtype == np.float32
        added = noisy.astype(np.float64) - clean.astype(np.float64)
        out.append(_db(clean, eps) - _db(added, eps))
    return np.array(out)


def test_noise_snr_within_range(shared_data, train_items, noise_files):
    aug = Augmenter(noise_files, noise_snr=(2.0, 12.0))
    snrs = _achieved_snrs(aug, "noise", train_items, eps=aug.level_eps)
    assert np.all(snrs >= 2.0 - 0.01) and np.all(snrs <= 12.0 + 0.01)
    assert snrs.std() > 1.0  # the SNR is drawn, not fixed
    music = Augmenter({"music": noise_files["noise"]})  # reference range 5-15 dB
    snrs = _achieved_snrs(music, "music", train_items, eps=music.level_eps, count=6)
    assert np.all(snrs >= 5.0 - 0.01) and np.all(snrs <= 15.0 + 0.01)


def test_babble_snr_within_range(shared_data, train_items):
    cohort = read_babble_list(shared_data / "lists/cohort_list.txt", shared_data)[:40]
    single = Augmenter(babble_files=cohort, num_babble=(1, 1))
    assert single.choices == ("none", "babble")
    snrs = _achieved_snrs(single, "babble", train_items, eps=single.level_eps, count=8)
    assert np.all(snrs >= 13.0 - 0.01) and np.all(snrs <= 20.0 + 0.01)
    # 3-7 talkers, each at 13-20 dB: the sum is louder than one but not louder than 7 at 13 dB
    crowd = Augmenter(babble_files=cohort)
    snrs = _achieved_snrs(crowd, "babble", train_items, eps=crowd.level_eps, count=8)
    assert np.all(snrs < 20.0) and np.all(snrs > 13.0 - 10 * np.log10(7) - 3.0)


def test_reference_level_eps_formula(tmp_path, speech):
    """With eps=1e-4 the gain is the reference's sqrt(10^((dB_c - dB_n - snr)/10))."""
    n = 8000
    noise = np.random.default_rng(3).normal(0, 0.05, n).astype(np.float32)
    path = tmp_path / "white.wav"
    sf.write(path, noise, 16000, subtype="FLOAT")  # exactly n samples: the crop is the file
    aug = Augmenter({"noise": [str(path)]}, level_eps=REFERENCE_LEVEL_EPS)
    clean = speech[10000 : 10000 + n]
    added = aug.apply(clean, "noise", np.random.default_rng(0)).astype(np.float64) - clean
    gain = np.dot(added, noise) / np.dot(noise, noise.astype(np.float64))
    np.testing.assert_allclose(added, gain * noise, atol=1e-6)
    snr = _db(clean, 1e-4) - _db(noise, 1e-4) - 10 * np.log10(gain**2)
    assert 0.0 <= snr <= 15.0


def test_reverb_matches_direct_convolution(speech, rir_files):
    clean = speech[20000:28000]
    for path in (rir_files[0], rir_files[3], rir_files[-1]):
        aug = Augmenter(rir_files=[path])
        out = aug.apply(clean, "reverb", np.random.default_rng(0))
        assert out.shape == clean.shape and out.dtype == np.float32
        rir = read_audio(path).astype(np.float64)
        rir /= np.sqrt(np.sum(rir**2))
        direct = np.convolve(clean.astype(np.float64), rir)[: len(clean)]
        np.testing.assert_allclose(out, direct, atol=1e-5)
        ratio = np.sum(out.astype(np.float64) ** 2) / np.sum(clean.astype(np.float64) ** 2)
        assert 0.05 < ratio < 5.0, (path, ratio)


def test_speed_perturbation_shifts_a_tone():
    sr, n = 16000, 16000
    tone = np.sin(2 * np.pi * 1000 * np.arange(n) / sr).astype(np.float32)
    for speed in (0.9, 1.1):
        aug = Augmenter(speed_perturb=True, speeds=(speed,))
        out = aug(tone, np.random.default_rng(0))  # choices == ("none",): speed only
        assert out.shape == tone.shape
        spectrum = np.abs(np.fft.rfft(out[:8000] * np.hanning(8000)))
        peak_hz = np.argmax(spectrum) * sr / 8000
        assert abs(peak_hz - 1000 * speed) <= 4


def test_augmenter_draws_every_choice_and_pickles_without_cache(noise_files, rir_files, speech):
    aug = Augmenter(noise_files, rir_files, babble_files=noise_files["noise"][:3])
    assert aug.choices == ("none", "reverb", "babble", "noise")
    rng = np.random.default_rng(1)
    picks = Counter(aug.choices[int(rng.integers(len(aug.choices)))] for _ in range(400))
    assert set(picks) == set(aug.choices)
    clean = speech[:4000]
    outs = [aug(clean, np.random.default_rng(s)) for s in range(12)]
    assert sum(np.array_equal(o, clean) for o in outs) < 12  # something was changed
    np.testing.assert_array_equal(aug(clean, np.random.default_rng(5)), outs[5])
    assert len(aug._cache) > 0
    copy = pickle.loads(pickle.dumps(aug))
    assert len(copy._cache) == 0
    np.testing.assert_array_equal(copy(clean, np.random.default_rng(5)), outs[5])
    tiny = Augmenter(noise_files, cache_mb=0.5)  # 0.5 MB holds ~131k samples: bounded cache
    for s in range(6):
        tiny.apply(clean, "noise", np.random.default_rng(s))
    assert tiny._cached_bytes <= 0.5 * 2**20
    with pytest.raises(ConfigError, match="unknown noise categories"):
        Augmenter({"traffic": ["x.wav"]})
