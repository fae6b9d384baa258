"""Batches written once: ``read_audio(out=...)`` decodes into a given row,
``SpeakerTrainDataset.__getitems__`` decodes a batch's crops into one buffer that the collater
returns without a copy (shared memory in a DataLoader worker), with items equal to
``__getitem__``'s, and ``stack_rows`` falls back to a stack for anything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from speechkit.data.audio import read_audio
from speechkit.data.augment import Augmenter, read_noise_list, read_rir_list
from speechkit.data.augment_draws import AugmentDrawer
from speechkit.data.batch_buffer import empty_batch, stack_rows
from speechkit.data.lists import read_train_list
from speechkit.data.speaker_dataset import SpeakerTrainDataset

SV_LIST = "lists/librispeech_test_other_train_all.txt"
GROUPS = [[0, 1], [10, 11], [20, 21], [30, 31]]


def test_read_audio_decodes_into_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mono, stereo = tmp_path / "mono.wav", tmp_path / "stereo.wav"
    sf.write(mono, rng.uniform(-0.5, 0.5, 4000), 16000, subtype="PCM_16")
    sf.write(stereo, rng.uniform(-0.5, 0.5, (4000, 2)), 16000, subtype="PCM_16")
    row = np.full(1000, 7.0, dtype=np.float32)
    got = read_audio(mono, start=500, frames=1000, out=row)
    assert got is row
    assert np.array_equal(row, sf.read(mono, dtype="float32", start=500, frames=1000)[0])
    # a two-channel file is averaged into a new array; a length other than out's too
    row[:] = 7.0
    averaged = read_audio(stereo, start=500, frames=1000, out=row)
    assert averaged is not row and averaged.shape == (1000,)
    assert np.array_equal(averaged, read_audio(stereo, start=500, frames=1000))
    shorter = read_audio(mono, start=3500, frames=1000, out=row)
    assert shorter is not row and len(shorter) == 500


def test_stack_rows() -> None:
    buffer = torch.arange(24.0).reshape(4, 2, 3)
    same = stack_rows([buffer[i] for i in range(4)])
    assert same.data_ptr() == buffer.data_ptr() and torch.equal(same, buffer)
    prefix = stack_rows([buffer[i] for i in range(3)])  # consecutive rows: still a view
    assert prefix.data_ptr() == buffer.data_ptr() and torch.equal(prefix, buffer[:3])
    rows = [buffer[i] for i in (1, 0, 2, 3)]
    stacked = stack_rows(rows)
    assert stacked.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
    assert torch.equal(stacked, torch.stack(rows))
    loose = [torch.ones(2, 3), torch.zeros(2, 3)]
    assert torch.equal(stack_rows(loose), torch.stack(loose))
    assert empty_batch((2, 5)).shape == (2, 5) and not empty_batch((2, 5)).is_shared()
    with pytest.raises(ValueError):
        stack_rows([])


@pytest.fixture(scope="module")
def datasets(shared_data: Path) -> dict[str, SpeakerTrainDataset]:
    items = read_train_list(shared_data / SV_LIST, shared_data)
    aug = Augmenter(
        read_noise_list(shared_data / "lists/noise_list.txt", shared_data),
        read_rir_list(shared_data / "lists/rir_list.txt", shared_data),
    )
    return {
        name: SpeakerTrainDataset(items, max_frames=100, n_per_speaker=2, augment=a, seed=3)
        for name, a in (("clean", None), ("worker", aug), ("drawn", AugmentDrawer(aug)))
    }


@pytest.mark.parametrize("name", ["clean", "worker", "drawn"])
def test_getitems_equals_getitem_and_collates_without_a_copy(datasets, name) -> None:
    dataset = datasets[name]
    one_by_one = dataset.collater([dataset[g] for g in GROUPS])
    items = dataset.__getitems__(GROUPS)
    batch = dataset.collater(items)
    assert batch["audio"].data_ptr() == items[0]["audio"].data_ptr()  # the buffer itself
    assert batch.keys() == one_by_one.keys()
    for key in ("id", "audio", "label"):
        assert torch.equal(batch[key], one_by_one[key]), key
    if name == "drawn":
        for key, value in one_by_one["augment"].items():
            assert torch.equal(batch["augment"][key], value), key


def test_a_worker_sends_the_buffer_in_shared_memory(datasets) -> None:
    dataset = datasets["worker"]
    expected = dataset.collater([dataset[g] for g in GROUPS])
    loader = DataLoader(dataset, batch_sampler=[GROUPS], collate_fn=dataset.collater, num_workers=1)
    (batch,) = list(loader)
    assert batch["audio"].is_shared()
    for key in ("id", "audio", "label"):
        assert torch.equal(batch[key], expected[key]), key


def test_pcm16_batches_are_the_float_batches_scaled(datasets, tmp_path: Path) -> None:
    drawn = datasets["drawn"]
    items = list(zip(drawn.speakers, drawn.paths))
    pcm16 = SpeakerTrainDataset(
        items, max_frames=100, n_per_speaker=2, augment=drawn.augment, seed=3, pcm16=True
    )
    floats = drawn.collater(drawn.__getitems__(GROUPS))
    batch = pcm16.collater(pcm16.__getitems__(GROUPS))
    assert batch["audio"].dtype == torch.int16
    assert torch.equal(batch["audio"].float() * 2**-15, floats["audio"])
    for key, value in floats["augment"].items():
        assert torch.equal(batch["augment"][key], value), key
    # a float WAV that int16 cannot hold: that batch comes as float32, equal to the float path
    rng = np.random.default_rng(0)
    odd = tmp_path / "float.wav"
    sf.write(odd, rng.uniform(-0.5, 0.5, 40000).astype(np.float32), 16000, subtype="FLOAT")
    mixed = [*items, (items[0][0], str(odd))]
    kwargs = dict(max_frames=100, n_per_speaker=2, seed=3)
    groups = [[0, len(mixed) - 1], [10, 11]]
    want = SpeakerTrainDataset(mixed, **kwargs)
    got = SpeakerTrainDataset(mixed, pcm16=True, **kwargs)
    expected, fallback = (
        want.collater(want.__getitems__(groups)),
        got.collater(got.__getitems__(groups)),
    )
    assert fallback["audio"].dtype == torch.float32
    assert torch.equal(fallback["audio"], expected["audio"])
    # the float file is remembered: its batches load as float32 at once, the others as int16
    assert got._not_pcm16 == {len(mixed) - 1}
    again = got.collater(got.__getitems__(groups))
    assert again["audio"].dtype == torch.float32
    assert torch.equal(again["audio"], expected["audio"])
    assert got.collater(got.__getitems__([[10, 11]]))["audio"].dtype == torch.int16
    with pytest.raises(ValueError, match="pcm16"):
        SpeakerTrainDataset(items, pcm16=True, augment=datasets["worker"].augment)
