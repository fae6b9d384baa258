"""Every configs/experiment/*.yaml composes and builds its task, model and criterion.

Data paths of the presets point at full datasets; here they are redirected to the real test data
in ../shared/data (same formats), and multi-GPU presets are composed with world_size unset.
Presets whose task reads derived data (dumped embeddings) are built and trained on that data in
their own pipeline test (tests/test_enhancement_pipeline.py); here their configs are resolved
against the registries.
"""

from __future__ import annotations

import pytest
import torch

from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY, TASK_REGISTRY
from speechkit.train import build_components
from tests.helpers import CONFIG_DIR, compose_cfg

BUILT_ELSEWHERE = {"embedding_enhancement"}
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def data_overrides(task_name: str, shared) -> list[str]:
    lists = shared / "lists"
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
    return []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_builds(name, shared_data, tmp_path):
    cfg = compose_cfg([f"experiment={name}"])
    overrides = [
        f"experiment={name}",
        f"checkpoint.save_dir={tmp_path}",
        "distributed.world_size=null",
        *data_overrides(cfg.task._name, shared_data),
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
