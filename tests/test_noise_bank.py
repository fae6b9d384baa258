"""``NoiseBank``: the segments it cuts equal ``random_crop`` of the decoded files, for files
longer and shorter than the crop, 16-bit files stored as int16 (exactly) and float files as
float32; ``AugmentDrawer`` with the bank's layout draws the starts ``random_crop`` draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.data.augment import Augmenter
from speechkit.data.augment_draws import AugmentDrawer
from speechkit.data.crop import random_crop
from speechkit.data.noise_bank import NoiseBank
from speechkit.errors import DataError

CROP = 1000


def write(path: Path, samples: np.ndarray, subtype: str) -> str:
    sf.write(path, samples, 16000, subtype=subtype)
    return str(path)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    return {
        "long16": write(tmp_path / "long16.wav", rng.uniform(-0.5, 0.5, 5000), "PCM_16"),
        "short16": write(tmp_path / "short16.wav", rng.uniform(-0.5, 0.5, 300), "PCM_16"),
        "exact16": write(tmp_path / "exact16.wav", rng.uniform(-0.5, 0.5, CROP), "PCM_16"),
        "float": write(tmp_path / "float.wav", rng.uniform(-0.5, 0.5, 2500), "FLOAT"),
    }


@pytest.mark.parametrize("kinds", [("long16", "short16", "exact16"), ("long16", "float")])
def test_segments_equal_random_crops_of_the_decoded_files(files, kinds) -> None:
    paths = [files[k] for k in kinds]
    aug = Augmenter({"noise": paths})
    bank = NoiseBank.from_augmenter(aug)
    assert bank.files == paths
    assert bank.data.dtype == (torch.float32 if "float" in kinds else torch.int16)
    layout = bank.layout
    expected, refs = [], []
    for seed in range(40):
        path = paths[seed % len(paths)]
        rng_crop, rng_draw = np.random.default_rng(seed), np.random.default_rng(seed)
        expected.append(random_crop(aug.decode(path), CROP, rng_crop))
        file, length = layout[path]
        assert length == len(aug.decode(path))
        # the drawer's rule: a start from the wrap-padded length, as random_crop draws it
        start = int(rng_draw.integers(0, max(max(length, CROP + 1) - CROP, 1)))
        assert rng_crop.integers(1 << 40) == rng_draw.integers(1 << 40)
        refs.append((file, start))
    file, start = (torch.tensor(v) for v in zip(*refs))
    out = bank.segments(file, start, CROP)
    assert out.dtype == torch.float32 and out.shape == (40, CROP)
    assert torch.equal(out, torch.from_numpy(np.stack(expected)))


def test_drawer_with_a_bank_draws_what_the_worker_path_crops(files) -> None:
    paths = [files["long16"], files["short16"]]
    aug = Augmenter({"noise": paths}, babble_files=[files["exact16"]], num_babble=(1, 1))
    bank = NoiseBank.from_augmenter(aug)
    sent, referenced = AugmentDrawer(aug), AugmentDrawer(aug, bank.layout)
    kinds = set()
    for seed in range(30):
        a = sent.draw(CROP, np.random.default_rng(seed))
        b = referenced.draw(CROP, np.random.default_rng(seed))
        kinds.add(a.kind)
        assert (a.kind, a.speed, a.snr) == (b.kind, b.speed, b.snr)
        assert b.noise == () and len(b.noise_ref) == len(a.noise)
        if a.noise:
            file, start = (torch.tensor(v) for v in zip(*b.noise_ref))
            assert torch.equal(
                bank.segments(file, start, CROP), torch.from_numpy(np.stack(a.noise))
            )
    assert {"noise", "babble"} <= kinds


def test_an_unreadable_source_is_named(files, tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEnot audio")
    with pytest.raises(DataError, match="broken.wav"):
        NoiseBank.from_augmenter(Augmenter({"noise": [files["long16"], str(broken)]}))


def test_rirs_travel_as_indices_and_come_back_whole(files, tmp_path: Path) -> None:
    rirs = [files["short16"], files["exact16"]]
    aug = Augmenter(rir_files=rirs)
    bank = NoiseBank.from_augmenter(aug)
    assert bank.files == rirs
    drawer = AugmentDrawer(aug, bank.layout)
    draws = [drawer.draw(CROP, np.random.default_rng(seed)) for seed in range(12)]
    sent = [AugmentDrawer(aug).draw(CROP, np.random.default_rng(seed)) for seed in range(12)]
    reverb = [(d, s) for d, s in zip(draws, sent) if d.kind == "reverb"]
    assert reverb and all(d.rir is None and d.rir_ref >= 0 for d, _ in reverb)
    whole = bank.whole(torch.tensor([d.rir_ref for d, _ in reverb]))
    assert whole.shape == (len(reverb), CROP)  # zero-padded to the longest (exact16)
    for row, (_, s) in zip(whole, reverb):
        assert torch.equal(row[: len(s.rir)], torch.from_numpy(s.rir))
        assert not row[len(s.rir) :].any()
    silent = write(tmp_path / "silent.wav", np.zeros(400), "PCM_16")
    with pytest.raises(DataError, match="silent.wav: the RIR is all zeros"):
        NoiseBank.from_augmenter(Augmenter(rir_files=[rirs[0], silent]))
