"""Speaker-verification and HuBERT training from tar shards (``task.shards=``) through the
Trainer, on real recordings from shared/data: labels as the list gives them, exact mid-epoch
resumes (SV with 2 DataLoader workers), mid-epoch resumes refused from other data (list vs
shards, a repacked index), and the refused configurations."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.data.epoch_iterator import StreamBatches
from speechkit.data.shards import ShardIndex, pack_manifest, pack_train_list
from speechkit.errors import ConfigError
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import compose_cfg

SV_LIST = "lists/librispeech_test_other_train_all.txt"  # 100 utterances of 10 speakers
SHARD_SIZE = 3_000_000  # about 9 shards


@pytest.fixture(scope="module")
def sv_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sv_train") / "shards"
    pack_train_list(shared_data / SV_LIST, shared_data, out, shard_size=SHARD_SIZE)
    return out


def sv_cfg(shared: Path, shards: Path | None, save_dir: Path, *extra: str):
    """The sv_demo model (ResNetSE34L) with AAM-softmax, 1 s crops, 4 utterances per batch,
    one thread, no validation."""
    data = [f"task.shards={shards}", "task.train_list=null"] if shards else []
    return compose_cfg(
        [
            "experiment=sv_demo",
            "criterion=aamsoftmax",
            "task.n_per_speaker=1",
            f"task.root={shared}",
            *data,
            "task.test_list=null",
            "task.max_frames=100",
            "task.shard_buffer=8",
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


def make_trainer(cfg) -> Trainer:
    threads = torch.get_num_threads()
    seed_everything(cfg.common.seed)
    try:
        return Trainer(cfg, *build_components(cfg))
    finally:
        torch.set_num_threads(threads)  # the Trainer pinned it for this process


def run(cfg) -> Trainer:
    threads = torch.get_num_threads()
    trainer = make_trainer(cfg)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return trainer


def test_labels_and_batches_from_shards(shared_data: Path, sv_shards: Path, tmp_path: Path) -> None:
    cfg = sv_cfg(shared_data, sv_shards, tmp_path)
    task = build_components(cfg)[0]
    listed = build_components(
        sv_cfg(shared_data, None, tmp_path, f"task.train_list={shared_data / SV_LIST}")
    )[0]
    assert task.label_of_speaker == listed.label_of_speaker and task.num_classes == 10
    plan = task.batches("train", 1, 4)
    assert isinstance(plan, StreamBatches) and plan.batch_size == 4
    ds = task.dataset("train")
    ds.set_epoch(1)
    items = [item for _, item in zip(range(4), ds)]
    batch = plan.collater(items)
    assert batch["audio"].shape == (4, 1, 100 * 160 + 240)
    assert batch["label"].tolist() == [item["label"] for item in items]


def test_resume_mid_epoch_is_exact(shared_data: Path, sv_shards: Path, tmp_path: Path) -> None:
    """3 updates, stop (checkpoint_last), resume to 6 with 2 workers: the weights equal those
    of 6 uninterrupted updates bit for bit."""
    common = ("dataset.num_workers=2",)
    full = run(
        sv_cfg(shared_data, sv_shards, tmp_path / "full", *common, "optimization.max_update=6")
    )
    part = run(
        sv_cfg(shared_data, sv_shards, tmp_path / "part", *common, "optimization.max_update=3")
    )
    assert (part.epoch, part.iterations_in_epoch) == (1, 3)
    resumed = run(
        sv_cfg(shared_data, sv_shards, tmp_path / "part", *common, "optimization.max_update=6")
    )
    assert resumed.num_updates == 6 and resumed.iterations_in_epoch == 6
    reference = full.model.state_dict()
    assert any(not torch.equal(v, reference[k]) for k, v in part.model.state_dict().items())
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, reference[k]), k

    # a mid-epoch resume with another worker count or buffer is refused, naming both values
    other = sv_cfg(
        shared_data,
        sv_shards,
        tmp_path / "part",
        "dataset.num_workers=1",
        "task.shard_buffer=4",
        "optimization.max_update=9",
    )
    with pytest.raises(ConfigError, match=r"dataset.num_workers=2 \(now 1\).*shard_buffer=8"):
        make_trainer(other).load_checkpoint()
    # ... unless the data restarts
    restart = make_trainer(
        sv_cfg(
            shared_data,
            sv_shards,
            tmp_path / "part",
            "dataset.num_workers=1",
            "checkpoint.reset_dataloader=true",
        )
    )
    assert restart.load_checkpoint() and restart.iterations_in_epoch == 0


def test_resume_refuses_other_data(
    shared_data: Path, sv_shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mid-epoch checkpoint resumes only from the data it was written with: a list run's not
    from shards, a shard run's neither from the list nor from shards packed otherwise (its
    ``shards.json`` digest); a copy of the shards elsewhere resumes. A checkpoint without the
    digest (written before it was kept) resumes with a warning."""
    listed = f"task.train_list={shared_data / SV_LIST}"
    run(sv_cfg(shared_data, sv_shards, tmp_path / "s", "optimization.max_update=2"))
    run(sv_cfg(shared_data, None, tmp_path / "l", listed, "optimization.max_update=2"))
    state = torch.load(tmp_path / "s" / "checkpoint_last.pt", weights_only=True)
    assert state["train_state"]["iterations_in_epoch"] == 2
    assert state["train_state"]["data"] == {"shards_sha256": ShardIndex.load(sv_shards).sha256}

    def resume(shards: Path | None, save_dir: Path, *extra: str) -> Trainer:
        trainer = make_trainer(sv_cfg(shared_data, shards, save_dir, *extra))
        assert trainer.load_checkpoint()
        return trainer

    with pytest.raises(
        ConfigError,
        match=rf"reading task.train_list=\S+{re.escape(SV_LIST)}, but this run reads "
        rf"task.shards={re.escape(str(sv_shards))}: .*checkpoint.reset_dataloader=true",
    ) as refused:
        resume(sv_shards, tmp_path / "l")
    assert "\n" not in str(refused.value)
    with pytest.raises(
        ConfigError,
        match=rf"task.shards={re.escape(str(sv_shards))}, but this run reads task.train_list=",
    ):
        resume(None, tmp_path / "s", listed)
    restarted = resume(None, tmp_path / "s", listed, "checkpoint.reset_dataloader=true")
    assert (restarted.num_updates, restarted.iterations_in_epoch) == (2, 0)

    repacked = pack_train_list(shared_data / SV_LIST, shared_data, tmp_path / "re", 5_000_000)
    assert (
        repacked.sha256
        == ShardIndex.load(tmp_path / "re").sha256
        != state["train_state"]["data"]["shards_sha256"]
    )
    with pytest.raises(
        ConfigError, match=r"sha256 \w{12}\), but \S+/re/shards.json has sha256 \w{12} \(repacked"
    ):
        resume(tmp_path / "re", tmp_path / "s")
    shutil.copytree(sv_shards, tmp_path / "copy")
    assert resume(tmp_path / "copy", tmp_path / "s").iterations_in_epoch == 2

    del state["train_state"]["data"]  # as saved before the digest was kept
    torch.save(state, tmp_path / "s" / "old.pt")
    with caplog.at_level(logging.WARNING, logger="speechkit"):
        old = resume(tmp_path / "re", tmp_path / "s", "checkpoint.restore_file=old.pt")
    assert old.iterations_in_epoch == 2
    assert "predates the shard index digest" in caplog.text


def test_refused_configurations(shared_data: Path, sv_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_per_speaker=2.*speaker-balanced"):
        build_components(sv_cfg(shared_data, sv_shards, tmp_path, "task.n_per_speaker=2"))
    both = sv_cfg(
        shared_data,
        None,
        tmp_path,
        f"task.train_list={shared_data / SV_LIST}",
        f"task.shards={sv_shards}",
    )
    with pytest.raises(ConfigError, match="both set"):
        build_components(both)
    with pytest.raises(ConfigError, match="task.train_list=FILE .* or task.shards=DIR"):
        build_components(sv_cfg(shared_data, None, tmp_path, "task.train_list=null"))


NUM_MANIFEST, NUM_UNITS = 24, 50


@pytest.fixture(scope="module")
def hubert_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first NUM_MANIFEST entries of the shared manifest with random 50 Hz units, packed;
    the folder also holds dict.km.txt (``task.data``)."""
    d = tmp_path_factory.mktemp("hubert_train")
    lines = (shared_data / "lists/pretrain_manifest.tsv").read_text().splitlines()
    entries = lines[1 : NUM_MANIFEST + 1]
    (d / "train.tsv").write_text("\n".join([str(shared_data), *entries]) + "\n")
    rng = np.random.default_rng(0)
    km = [
        " ".join(map(str, rng.integers(0, NUM_UNITS, int(e.split("\t")[1]) // 320)))
        for e in entries
    ]
    (d / "train.km").write_text("\n".join(km) + "\n")
    (d / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(NUM_UNITS)))
    pack_manifest(d / "train.tsv", d / "shards", [d / "train.km"], [50], shard_size=1_500_000)
    (d / "train.tsv").unlink()  # training must come from the shards
    return d


def hubert_cfg(d: Path, save_dir: Path, *extra: str):
    return compose_cfg(
        [
            "experiment=hubert_demo",
            f"task.data={d}",
            f"task.label_dir={d}",
            f"task.shards={d / 'shards'}",
            "task.shard_buffer=6",
            "task.label_rate=50",
            "task.max_sample_size=16000",
            "dataset.max_tokens=null",
            "dataset.batch_size=4",
            "dataset.num_workers=0",
            "dataset.validate_before_training=false",
            "dataset.validate_interval_updates=0",
            "dataset.validate_interval=0",
            "checkpoint.save_interval_updates=0",
            f"checkpoint.save_dir={save_dir}",
            "common.log_format=none",
            "common.tensorboard_logdir=null",
            "common.num_threads=1",
            *extra,
        ]
    )


def test_hubert_from_shards_resumes_exactly(hubert_shards: Path, tmp_path: Path) -> None:
    """HuBERT (hubert_demo sizes) on shards: 2 updates, stop, resume to 4 == 4 in one run."""
    full = run(hubert_cfg(hubert_shards, tmp_path / "full", "optimization.max_update=4"))
    part = run(hubert_cfg(hubert_shards, tmp_path / "part", "optimization.max_update=2"))
    assert (part.epoch, part.iterations_in_epoch) == (1, 2)
    resumed = run(hubert_cfg(hubert_shards, tmp_path / "part", "optimization.max_update=4"))
    reference = full.model.state_dict()
    assert any(not torch.equal(v, reference[k]) for k, v in part.model.state_dict().items())
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, reference[k]), k

    task = build_components(hubert_cfg(hubert_shards, tmp_path / "x"))[0]
    with pytest.raises(ConfigError, match="dataset.max_tokens=null"):
        task.batches("train", 1, None, 128000)
    with pytest.raises(ConfigError, match=r"label streams \['km'\], but task.labels=\['phn'\]"):
        build_components(hubert_cfg(hubert_shards, tmp_path / "x", "task.labels=[phn]"))
