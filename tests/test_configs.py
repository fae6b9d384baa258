"""Every configs/experiment/*.yaml composes and builds its task, model and criterion.

Data paths of the presets point at full datasets; here they are redirected to the real test data
in ../shared/data (same formats), and multi-GPU presets are composed with world_size unset.
HuBERT / ContentVec presets get a one-utterance manifest of the real data with a label file,
dictionary and speaker table of the right formats (their training runs in
tests/test_pretraining_real_data.py). Presets whose task reads derived data (dumped embeddings)
are built and trained on that data in their own tests (tests/test_enhancement_pipeline.py,
tests/test_separation_real_data.py); here their configs are resolved against the registries.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechkit.data.manifest import write_manifest
from speechkit.data.spk2info import SpeakerInfo, save_spk2info
from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY, TASK_REGISTRY
from speechkit.train import build_components
from tests.helpers import CONFIG_DIR, compose_cfg

BUILT_ELSEWHERE = {"embedding_enhancement", "target_speaker_separation"}
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def pretraining_dir(shared_data, tmp_path_factory):
    """train.tsv / train.km / dict.km.txt / spk2info.dict for one real utterance."""
    out = tmp_path_factory.mktemp("pretraining")
    rel = "speech/librispeech_test_other/1688/1688-142285-0000.wav"
    write_manifest(out / "train.tsv", str(shared_data), [rel], [240000])
    (out / "train.km").write_text(" ".join(["3"] * 750) + "\n")
    (out / "dict.km.txt").write_text("".join(f"{k} 1\n" for k in range(500)))
    # A unit-norm embedding: the ContentVec demo initialises its conditional layer norms from
    # the mean speaker embedding, which must be non-zero.
    emb = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    info = SpeakerInfo(emb / np.linalg.norm(emb), 50.0, 300.0, sex="M")
    save_spk2info(out / "spk2info.dict", {"train": {"1688": info}})
    return out


def data_overrides(task_name: str, shared, pretraining_dir) -> list[str]:
    lists = shared / "lists"
    if task_name in ("hubert", "contentvec"):
        out = [f"task.data={pretraining_dir}", f"task.label_dir={pretraining_dir}"]
        if task_name == "contentvec":
            out.append(f"task.spk2info={pretraining_dir / 'spk2info.dict'}")
        return out
    if task_name == "speaker_verification":
        return [
            f"task.root={shared}",
            f"task.train_list={lists / 'split_train_list.txt'}",
            f"task.test_list={lists / 'split_test_trials.txt'}",
            f"task.test_root={shared}",
            f"task.augmentation.noise_list={lists / 'noise_list.txt'}",
            f"task.augmentation.rir_list={lists / 'rir_list.txt'}",
            f"task.augmentation.babble_list={lists / 'cohort_list.txt'}",
        ]
    if task_name == "syncnet":
        return [
            f"task.root={shared}",
            f"task.train_list={lists / 'video_list.txt'}",
            f"task.valid_list={lists / 'video_list.txt'}",
            "task.image_size=224",
        ]
    return []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_builds(name, shared_data, pretraining_dir, tmp_path):
    cfg = compose_cfg([f"experiment={name}"])
    overrides = [
        f"experiment={name}",
        f"checkpoint.save_dir={tmp_path}",
        "distributed.world_size=null",
        *data_overrides(cfg.task._name, shared_data, pretraining_dir),
    ]
    cfg = compose_cfg(overrides)
    if cfg.task._name in BUILT_ELSEWHERE:
        for registry, node in (
            (TASK_REGISTRY, cfg.task),
            (MODEL_REGISTRY, cfg.model),
            (CRITERION_REGISTRY, cfg.criterion),
        ):
            registry.resolve_config(node)
        return
    task, model, criterion = build_components(cfg)
    assert isinstance(model, torch.nn.Module) and isinstance(criterion, torch.nn.Module)
    assert cfg.checkpoint.save_dir == str(tmp_path)


def test_debug_preset_composes():
    cfg = compose_cfg(["experiment=sv_demo", "debug=cpu"])
    assert cfg.common.cpu and cfg.optimization.max_update == 5
