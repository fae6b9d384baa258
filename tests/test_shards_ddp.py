"""Speaker verification from tar shards on 2 gloo ranks (torchrun): each rank trains on the
items the rank split promises (disjoint shards, the dataset's own stream order), and a run
resumed in a new process from a checkpoint written mid-epoch ends with the weights of an
uninterrupted run.

The task ``speaker_verification_ids`` (tests/user_dir_shard_ids) logs every rank's batch ids.
Real LibriSpeech recordings from shared/data: 100 utterances of 10 speakers in about 9 shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.data.shard_dataset import ShardDataset
from speechkit.data.shards import ShardIndex, pack_train_list
from tests.helpers import REPO_ROOT, run_torchrun

pytestmark = pytest.mark.slow

SV_LIST = "lists/librispeech_test_other_train_all.txt"
USER_DIR = REPO_ROOT / "tests" / "user_dir_shard_ids"
BATCH, BUFFER, SEED = 4, 8, 1


@pytest.fixture(scope="module")
def sv_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sv_ddp") / "shards"
    pack_train_list(shared_data / SV_LIST, shared_data, out, shard_size=3_000_000)
    return out


def train_2_ranks(shared: Path, shards: Path, run_dir: Path, *extra: str) -> None:
    """One epoch of ResNetSE34L + AAM-softmax on 0.5 s crops, 4 utterances per batch and rank,
    1 loader worker per rank; batch ids in run_dir/ids."""
    proc = run_torchrun(
        f"common.user_dir={USER_DIR}",
        "experiment=sv_demo",
        "task=speaker_verification_ids",
        "criterion=aamsoftmax",
        "task.n_per_speaker=1",
        f"task.root={shared}",
        f"task.shards={shards}",
        "task.train_list=null",
        "task.test_list=null",
        "task.max_frames=50",
        f"task.shard_buffer={BUFFER}",
        f"task.ids_dir={run_dir / 'ids'}",
        f"checkpoint.save_dir={run_dir}",
        f"common.seed={SEED}",
        "common.cpu=true",
        "common.log_format=none",
        "common.tensorboard_logdir=null",
        "common.num_threads=1",
        f"dataset.batch_size={BATCH}",
        "dataset.num_workers=1",
        "dataset.validate_before_training=false",
        "dataset.validate_interval=0",
        "dataset.validate_interval_updates=0",
        "distributed.world_size=2",
        "optimization.max_epoch=1",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def read_ids(run_dir: Path, rank: int) -> list[tuple[int, list[int]]]:
    """``(update, batch ids)`` per training batch of ``rank``, in order."""
    lines = (run_dir / "ids" / f"rank{rank}.txt").read_text().splitlines()
    return [(int(u), [int(i) for i in ids]) for u, *ids in (line.split() for line in lines)]


def flat(batches: list[tuple[int, list[int]]]) -> list[int]:
    return [i for _, ids in batches for i in ids]


def expected_stream(index: ShardIndex, rank: int) -> list[int]:
    """The entry numbers rank ``rank`` of 2 reads in epoch 1 (one worker, equal ranks), cut to
    whole batches: what the epoch iterator promises that rank."""
    ds = ShardDataset(
        index,
        lambda sample, seed, epoch: sample.index,
        rank=rank,
        world_size=2,
        buffer_size=BUFFER,
        seed=SEED,
        equal_ranks=True,
    )
    ds.set_epoch(1)
    items = list(ds.iter_worker(0, 1))
    return items[: len(items) // BATCH * BATCH]


def test_two_ranks_read_their_shards_and_resume_exactly(
    shared_data: Path, sv_shards: Path, tmp_path: Path
) -> None:
    index = ShardIndex.load(sv_shards)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # the uninterrupted epoch, saving a checkpoint after update 3 (mid-epoch) on the way
    train_2_ranks(
        shared_data,
        sv_shards,
        full,
        "checkpoint.save_interval_updates=3",
        "checkpoint.keep_last_checkpoints=-1",
    )

    # (a) the rank split: disjoint shards per rank, the same number of batches on both ranks,
    # each rank's items in the order of its stream
    first = np.cumsum([0] + [s.samples for s in index.shards])
    plan = ShardDataset(index, rank=0, world_size=2, buffer_size=BUFFER, seed=SEED)
    seen = {r: read_ids(full, r) for r in (0, 1)}
    assert [u for u, _ in seen[0]] == [u for u, _ in seen[1]]
    assert all(len(ids) == BATCH for r in (0, 1) for _, ids in seen[r])
    owned = {}
    for r in (0, 1):
        shards = plan.rank_shards(1, r).tolist()
        owned[r] = {i for s in shards for i in range(first[s], first[s + 1])}
        assert set(flat(seen[r])) <= owned[r]
        assert len(set(flat(seen[r]))) == len(flat(seen[r]))  # no item twice
        assert flat(seen[r]) == expected_stream(index, r)
    assert not owned[0] & owned[1] and owned[0] | owned[1] == set(range(index.num_samples))
    smallest = min(plan.rank_items(1, r) for r in (0, 1))
    assert len(seen[0]) == smallest // BATCH >= 6  # one epoch: all whole batches of the smaller

    # (b) a new 2-rank run resumes from the mid-epoch checkpoint: the rest of the same streams,
    # then the weights of the uninterrupted run
    mid = full / "checkpoint_1_3.pt"
    stopped = torch.load(mid, map_location="cpu", weights_only=True)
    ts = stopped["train_state"]
    assert (ts["epoch"], ts["iterations_in_epoch"], ts["world_size"]) == (1, 3, 2)
    assert ts["data"] == {"shards_sha256": index.sha256}
    train_2_ranks(shared_data, sv_shards, resumed, f"checkpoint.restore_file={mid}")
    for r in (0, 1):
        assert read_ids(resumed, r) == seen[r][3:]
    a = torch.load(full / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert b["train_state"]["num_updates"] == a["train_state"]["num_updates"] == len(seen[0])
    assert any(not torch.equal(v, a["model"][k]) for k, v in stopped["model"].items())
    for key in ("model", "criterion"):  # bit for bit (gloo sums the 2 ranks' gradients alike)
        for k, v in b[key].items():
            assert torch.equal(v, a[key][k]), f"{key}.{k}"
