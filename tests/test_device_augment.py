"""On-device augmentation (``task.augmentation.on_device``) against the worker path.

For the same per-item generators, :class:`AugmentDrawer` (worker: draw, decode, crop) followed
by :class:`DeviceAugmenter` (batched on the batch's device) gives what
:class:`Augmenter` gives in the worker, within float tolerance: noise, music, babble, reverb,
speed and all of them combined, on real LibriSpeech crops with the shared noise / RIR files;
the drawer leaves the generator where the augmenter leaves it; the same with the noise segments
cut from a ``NoiseBank`` on the device. The measured soxr kernels equal soxr itself. A training
run with ``on_device=true`` and the noise bank resumes bit-exactly.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

from speechkit.data.audio import read_audio
from speechkit.data.augment import (
    AUGMENTATIONS,
    Augmenter,
    read_babble_list,
    read_noise_list,
    read_rir_list,
)
from speechkit.data.augment_draws import AugmentDrawer, collate_draws, speed_length
from speechkit.data.crop import random_crop
from speechkit.data.device_augment import DeviceAugmenter, probe_speed_kernel, resample
from speechkit.data.epoch_iterator import move_to_device
from speechkit.data.lists import read_train_list
from speechkit.data.noise_bank import NoiseBank
from speechkit.data.shard_dataset import ShardDataset, SpeakerItems, batched
from speechkit.data.shards import ShardIndex, pack_train_list
from speechkit.data.speaker_dataset import SpeakerTrainDataset
from speechkit.errors import ConfigError
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import ModelWithCriterion, Trainer
from tests.helpers import compose_cfg

SV_LIST = "lists/librispeech_test_other_train_all.txt"
CROP = 100 * 160 + 240  # 1 s crops keep the test fast
ATOL = 2e-6  # float32 FFTs / soxr's float32 arithmetic on signals of peak ~0.5


@pytest.fixture(scope="module")
def lists(shared_data: Path) -> dict:
    return {
        "noise": read_noise_list(shared_data / "lists/noise_list.txt", shared_data),
        "rir": read_rir_list(shared_data / "lists/rir_list.txt", shared_data),
        "babble": read_babble_list(shared_data / "lists/cohort_list.txt", shared_data)[:40],
    }


@pytest.fixture(scope="module")
def crops(shared_data: Path) -> np.ndarray:
    """(24, CROP) real speech crops of 24 different utterances."""
    items = read_train_list(shared_data / SV_LIST, shared_data)
    rng = np.random.default_rng(0)
    return np.stack([random_crop(read_audio(p), CROP, rng) for _, p in items[::4][:24]])


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.95])
def test_measured_kernel_equals_soxr(factor: float, crops: np.ndarray) -> None:
    kernel = probe_speed_kernel(factor)
    noise = np.random.default_rng(1).standard_normal((2, 3001)).astype(np.float32) * 0.3
    for rows in (crops[:3], crops[:2, :777], noise):
        expected = np.stack([soxr.resample(r, 16000 * factor, 16000, quality="HQ") for r in rows])
        assert expected.shape[1] == speed_length(rows.shape[1], factor, 16000)
        out = resample(torch.from_numpy(np.ascontiguousarray(rows)), kernel).numpy()
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)  # edges included
    for length in range(1, 400, 37):
        assert len(soxr.resample(np.zeros(length, np.float32), 16000 * factor, 16000)) == (
            speed_length(length, factor, 16000)
        )
    with pytest.raises(ConfigError, match="ratio down/up"):
        probe_speed_kernel(0.7071067811865476)


def _worker_and_device(
    aug: Augmenter, crops: np.ndarray, seeds: range, bank: bool = False, on: str = "cpu"
):
    """(worker outputs, device outputs, drawn kinds) for crop i augmented with seed i; with
    ``bank`` the noise segments are cut from a ``NoiseBank`` instead of sent. The device path
    runs on ``on`` (the crops, the draws and the bank moved there, as the task moves them)."""
    noise_bank = NoiseBank.from_augmenter(aug).to(on) if bank else None
    drawer = AugmentDrawer(aug, noise_bank.layout if bank else None)
    device = DeviceAugmenter(level_eps=aug.level_eps, noise_bank=noise_bank)
    worker, draws = [], []
    for wav, seed in zip(crops, seeds):
        rng_w, rng_d = np.random.default_rng(seed), np.random.default_rng(seed)
        worker.append(aug(wav, rng_w))
        draws.append(drawer.draw(len(wav), rng_d))
        # the next draw (the next utterance's crop) is unchanged
        assert rng_w.integers(1 << 40) == rng_d.integers(1 << 40)
    batch = collate_draws(draws, crops.shape[1])
    if bank:  # segments and RIRs travel as references only
        assert batch["noise"].shape[0] == 0 and batch["rir"].shape[0] == 0
        assert batch["noise_file"].shape[0] + batch["rir_file"].shape[0] > 0
    audio = torch.from_numpy(crops[: len(draws)].copy()).view(4, -1, crops.shape[1])
    out = device(audio.to(on), move_to_device(batch, torch.device(on)))
    assert out.device.type == torch.device(on).type
    return np.stack(worker), out.reshape(len(draws), -1).cpu().numpy(), [d.kind for d in draws]


@pytest.mark.parametrize(
    "case, bank",
    [
        ("noise", False),
        ("music", False),
        ("babble", False),
        ("reverb", False),
        ("speed", False),
        ("combined", False),
        ("noise", True),
        ("babble", True),
        ("reverb", True),
        ("combined", True),
    ],
)
def test_device_equals_worker_for_the_same_draws(case: str, bank: bool, lists: dict, crops) -> None:
    aug = {
        "noise": lambda: Augmenter(lists["noise"]),
        "music": lambda: Augmenter({"music": lists["noise"]["noise"]}),
        "babble": lambda: Augmenter(babble_files=lists["babble"]),
        "reverb": lambda: Augmenter(rir_files=lists["rir"]),
        "speed": lambda: Augmenter(speed_perturb=True),
        "combined": lambda: Augmenter(
            lists["noise"], lists["rir"], lists["babble"], speed_perturb=True
        ),
    }[case]()
    worker, device, kinds = _worker_and_device(aug, crops, range(100, 124), bank)
    counts = Counter(kinds)
    if case in ("speed", "combined"):  # every speed factor, cropped and wrap-padded
        speeds = {
            AugmentDrawer(aug).draw(CROP, np.random.default_rng(s)).speed for s in range(100, 124)
        }
        assert speeds == {0.9, 1.0, 1.1}
    if case == "combined":
        assert set(counts) == {"none", "reverb", "babble", "noise"}, counts
    elif case != "speed":
        assert counts[case] >= 4 and counts["none"] >= 2, counts
    changed = ~np.all(worker == crops, axis=1)
    assert changed.sum() >= 6  # the comparison is not between clean crops
    np.testing.assert_allclose(device, worker, rtol=0, atol=ATOL)


def test_datasets_carry_the_draws(lists: dict, shared_data: Path, tmp_path: Path) -> None:
    """A list dataset with an ``AugmentDrawer``: clean crops plus draws whose rendering equals
    the augmenter's items (groups of 2: the draws follow ``audio.reshape(B * M, L)``); a shard
    item equals the list item of the same utterance."""
    items = read_train_list(shared_data / SV_LIST, shared_data)
    aug = Augmenter(lists["noise"], lists["rir"], lists["babble"], speed_perturb=True)
    worker = SpeakerTrainDataset(items, max_frames=100, n_per_speaker=2, augment=aug, seed=3)
    drawn = SpeakerTrainDataset(
        items, max_frames=100, n_per_speaker=2, augment=AugmentDrawer(aug), seed=3
    )
    clean = SpeakerTrainDataset(items, max_frames=100, n_per_speaker=2, seed=3)
    groups = [[0, 1], [10, 11], [20, 21], [30, 31], [40, 41], [50, 52]]
    expected = worker.collater([worker[g] for g in groups])
    batch = drawn.collater([drawn[g] for g in groups])
    assert set(batch) == {"id", "audio", "label", "augment"} and "augment" not in expected
    # the first crop of a group is drawn before any augmentation draw: the clean crop
    plain = clean.collater([clean[g] for g in groups])["audio"]
    torch.testing.assert_close(batch["audio"][:, 0], plain[:, 0], rtol=0, atol=0)
    out = DeviceAugmenter().augment_sample(batch)
    assert set(out) == {"id", "audio", "label"} and out["audio"].shape == (6, 2, CROP)
    torch.testing.assert_close(out["audio"], expected["audio"], rtol=0, atol=ATOL)

    shards = tmp_path / "shards"
    pack_train_list(shared_data / SV_LIST, shared_data, shards, shard_size=3_000_000)
    index = ShardIndex.load(shards)
    stream = ShardDataset(
        index, SpeakerItems.from_index(index, max_frames=100, augment=AugmentDrawer(aug)), seed=3
    )
    stream.set_epoch(0)
    shard_items = [item for _, item in zip(range(4), stream.iter_worker(0, 1))]
    single = next(batched(shard_items, 4, drawn.collater))
    kinds = [AUGMENTATIONS[k] for k in single["augment"]["kind"].tolist()]
    listed = drawn.collater([drawn[[int(i["id"][0])]] for i in shard_items])
    torch.testing.assert_close(
        DeviceAugmenter()(single["audio"], single["augment"]),
        DeviceAugmenter()(listed["audio"], listed["augment"]),
        rtol=0,
        atol=0,
        msg=f"kinds {kinds}",
    )


def sv_cfg(shared: Path, save_dir: Path, *extra: str):
    """sv_demo's ResNetSE34L + AAM-softmax, 1 s crops, 4 utterances per batch, shared noise and
    RIR augmentation with speed perturbation, one thread, no validation."""
    return compose_cfg(
        [
            "experiment=sv_demo",
            "criterion=aamsoftmax",
            "task.n_per_speaker=1",
            f"task.root={shared}",
            f"task.train_list={shared / SV_LIST}",
            "task.test_list=null",
            "task.max_frames=100",
            "task.augment=true",
            f"task.augmentation.noise_list={shared / 'lists/noise_list.txt'}",
            f"task.augmentation.rir_list={shared / 'lists/rir_list.txt'}",
            "task.augmentation.speed_perturb=true",
            f"checkpoint.save_dir={save_dir}",
            "common.cpu=true",
            "common.log_format=none",
            "common.tensorboard_logdir=null",
            "common.num_threads=1",
            "dataset.batch_size=4",
            "dataset.validate_before_training=false",
            "dataset.validate_interval=0",
            "dataset.validate_interval_updates=0",
            "checkpoint.save_interval_updates=0",
            "optimization.max_epoch=0",
            *extra,
        ]
    )


def run(cfg) -> Trainer:
    threads = torch.get_num_threads()
    seed_everything(cfg.common.seed)
    try:
        trainer = Trainer(cfg, *build_components(cfg))
        trainer.train()
    finally:
        torch.set_num_threads(threads)  # the Trainer pinned it for this process
    return trainer


def test_train_step_augments_like_the_worker_path(shared_data: Path, tmp_path: Path) -> None:
    """The task's first batch: the on-device train step's loss, with and without the noise
    bank, equals the worker path's."""
    losses = []
    for on_device, bank in (("false", "false"), ("true", "false"), ("true", "true")):
        cfg = sv_cfg(
            shared_data,
            tmp_path,
            f"task.augmentation.on_device={on_device}",
            f"task.augmentation.noise_bank={bank}",
        )
        seed_everything(cfg.common.seed)
        task, model, criterion = build_components(cfg)
        dataset = task.dataset("train")
        task.set_epoch("train", 1)
        assert isinstance(dataset.augment, AugmentDrawer) == (on_device == "true")
        sample = dataset.collater([dataset[g] for g in task.batches("train", 1, 4)[0]])
        assert ("augment" in sample) == (on_device == "true")
        if on_device == "true":  # something to render: not all "none" at speed 1
            draws = sample["augment"]
            assert bool((draws["kind"] > 0).any() or (draws["speed"] != 1).any())
            assert (draws["noise_file"].numel() > 0) == (bank == "true")
        loss, size, _ = task.train_step(sample, ModelWithCriterion(model, criterion), 0)
        losses.append(float(loss.detach()))
        if on_device == "true":  # the DataLoader's batch path sends 16-bit PCM: same loss
            pcm = dataset.collater(dataset.__getitems__(task.batches("train", 1, 4)[0]))
            assert pcm["audio"].dtype == torch.int16
            loss16, _, _ = task.train_step(pcm, ModelWithCriterion(model, criterion), 0)
            assert float(loss16.detach()) == pytest.approx(losses[-1], rel=1e-6)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert losses[2] == pytest.approx(losses[0], rel=1e-4)
    with pytest.raises(ConfigError, match="noise_bank=true .* needs task.augment=true and"):
        build_components(sv_cfg(shared_data, tmp_path, "task.augmentation.noise_bank=true"))


def test_on_device_training_resumes_exactly(shared_data: Path, tmp_path: Path) -> None:
    """3 updates, stop, resume to 6 with a DataLoader worker: the weights equal those of 6
    uninterrupted updates bit for bit (the draws come from the per-item generators; the noise
    segments from the noise bank)."""
    common = (
        "task.augmentation.on_device=true",
        "task.augmentation.noise_bank=true",
        "dataset.num_workers=1",
    )
    full = run(sv_cfg(shared_data, tmp_path / "full", *common, "optimization.max_update=6"))
    part = run(sv_cfg(shared_data, tmp_path / "part", *common, "optimization.max_update=3"))
    assert (part.epoch, part.iterations_in_epoch) == (1, 3)
    resumed = run(sv_cfg(shared_data, tmp_path / "part", *common, "optimization.max_update=6"))
    assert resumed.num_updates == 6
    reference = full.model.state_dict()
    assert any(not torch.equal(v, reference[k]) for k, v in part.model.state_dict().items())
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    with pytest.raises(ConfigError, match="speed factor 0.7071"):
        build_components(
            sv_cfg(
                shared_data, tmp_path, *common, "task.augmentation.speeds=[0.9,0.7071067811865476]"
            )
        )
