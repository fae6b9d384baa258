"""Every configs/experiment/*.yaml composes and builds its task, model and criterion; the data
roots come from the ``paths`` group, demos inherit from full presets, choice fields fail at
composition, old registry names still compose, and ``debug=overfit`` composes.

Data paths of the presets point at full datasets; here they are redirected to the real test data
in ../shared/data (same formats), and multi-GPU presets are composed with world_size unset.
HuBERT / ContentVec presets get a one-utterance manifest of the real data with a label file,
dictionary and speaker table of the right formats (their training runs in
tests/test_pretraining_real_data.py). Presets whose task reads derived data (dumped embeddings)
are built and trained on that data in their own tests (tests/test_enhancement_pipeline.py,
tests/test_separation_real_data.py, tests/test_voicevector_distillation.py); here their
configs are resolved against the registries.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from speechkit.data.manifest import write_manifest
from speechkit.data.spk2info import SpeakerInfo, save_spk2info
from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY, TASK_REGISTRY
from speechkit.train import build_components
from tests.helpers import CONFIG_DIR, compose_cfg

BUILT_ELSEWHERE = {
    "embedding_enhancement",
    "target_speaker_separation",
    "voicevector_enrolment_distillation",
}
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


def test_debug_overfit_preset_composes():
    cfg = compose_cfg(["experiment=sv_demo", "debug=overfit"])
    # the task-specific part (configs/debug_task/overfit_speaker_verification.yaml)
    assert cfg.task.augment is False and cfg.task.max_seg_per_spk == 4
    assert cfg.optimization.max_epoch == 200 and cfg.optimization.max_update == 0
    assert cfg.dataset.disable_validation and cfg.checkpoint.no_save
    assert cfg.dataset.batch_size == 2 and cfg.distributed.world_size == 1
    # a task without a task-specific part overfits its whole list
    cfg = compose_cfg(["experiment=hubert_demo", "debug=overfit"])
    assert cfg.optimization.max_epoch == 200 and cfg.dataset.max_tokens is None
    # debug=cpu has no task-specific part either
    assert compose_cfg(["experiment=sv_demo", "debug=cpu"]).task.max_seg_per_spk == 500


# a value that starts like a data root written out instead of ${paths.*}
HARD_CODED_ROOT = re.compile(r"^(data|demo_data|\.\./shared/data)(/|$)")


def _values(node, key=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _values(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _values(v, f"{key}[{i}]")
    else:
        yield key, node


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_presets_take_data_roots_from_paths(name, monkeypatch):
    raw = dict(_values(yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())))
    hard = [f"{k}: {v}" for k, v in raw.items() if isinstance(v, str) and HARD_CODED_ROOT.match(v)]
    assert not hard, hard
    monkeypatch.delenv("SPEECHKIT_DATA", raising=False)
    default = compose_cfg([f"experiment={name}"])
    moved = compose_cfg(
        [f"experiment={name}", "paths.data_root=/A", "paths.demo_root=/B", "paths.shared_data=/C"]
    )
    for key, value in raw.items():
        if isinstance(value, str) and "${paths." in value:
            old, new = OmegaConf.select(default, key), OmegaConf.select(moved, key)
            assert new != old and new.startswith(("/A/", "/B/", "/C")), (key, old, new)


def test_paths_default_reads_the_environment(monkeypatch):
    monkeypatch.setenv("SPEECHKIT_DATA", "/mnt/corpora")
    cfg = compose_cfg(["experiment=sv_ecapa_aam_vox2"])
    assert cfg.task.root == "/mnt/corpora/voxceleb2/dev/wav"
    assert cfg.task.augmentation.rir_list == "/mnt/corpora/rir_list.txt"
    monkeypatch.delenv("SPEECHKIT_DATA")
    cfg = compose_cfg(["experiment=sv_ecapa_aam_vox2"])
    assert cfg.task.root == "data/voxceleb2/dev/wav" and cfg.paths.shared_data == "../shared/data"
    # the registry resolves ${paths.*} before building (the node gets a new root there)
    _, task_cfg = TASK_REGISTRY.resolve_config(cfg.task)
    assert task_cfg.root == "data/voxceleb2/dev/wav"


# demo -> the full preset it inherits from (enhancement_demo has no full preset)
DEMO_PARENTS = {
    "contentvec_demo": "contentvec_base",
    "hubert_demo": "hubert_base_iter1",
    "sv_demo": "sv_resnet_se34l_angleproto_vox2",
    "syncnet_demo": "syncnet_vox2",
    "tss_demo": "tss_voicevector_ae",
}


@pytest.mark.parametrize("demo, parent", sorted(DEMO_PARENTS.items()))
def test_demos_inherit_from_full_presets(demo, parent):
    text = yaml.safe_load((CONFIG_DIR / "experiment" / f"{demo}.yaml").read_text())
    assert text["defaults"][0] == parent and text["defaults"][-1] == "_self_"
    a, b = compose_cfg([f"experiment={demo}"]), compose_cfg([f"experiment={parent}"])
    for group in ("task", "model", "criterion", "optimizer"):
        assert a[group]._name == b[group]._name, group
    # the demo overrides what differs, e.g. the run directory, and keeps the rest
    assert a.checkpoint.save_dir != b.checkpoint.save_dir
    assert a.optimizer == b.optimizer
    # full presets keep their schedule's settings in an lr_scheduler option
    # (configs/lr_scheduler/*.yaml), so a demo or the command line can swap the schedule
    assert compose_cfg([f"experiment={demo}", "lr_scheduler=cosine"]).lr_scheduler._name == "cosine"


def test_every_demo_has_a_parent_or_is_listed():
    demos = {n for n in EXPERIMENTS if n.endswith("_demo")}
    assert demos - set(DEMO_PARENTS) == {"enhancement_demo"}


def test_choice_fields_fail_at_composition_naming_field_and_values():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["experiment=sv_demo", "model.encoder_type=TAP"])
    msg = str(e.value) + str(e.value.__cause__)
    assert "Invalid value 'TAP', expected one of [SAP, ASP]" in msg
    assert "full_key: model.encoder_type" in msg
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["task=speaker_verification", "criterion.margin_warmup_type=cosine"])
    msg = str(e.value) + str(e.value.__cause__)
    assert "expected one of [exp, linear]" in msg and "criterion.margin_warmup_type" in msg
    # the plain string is accepted on the command line and in YAML (sv_resnet_se34v2 preset:
    # encoder_type: ASP), and the built config holds a plain string
    cfg = compose_cfg(["experiment=sv_demo", "model.encoder_type=ASP"])
    _, model_cfg = MODEL_REGISTRY.resolve_config(cfg.model)
    assert model_cfg.encoder_type == "ASP" and type(model_cfg.encoder_type) is str
    cfg = compose_cfg(["experiment=sv_resnet_se34v2_softmaxproto_vox2"])
    assert cfg.model.encoder_type == "ASP"
    cfg = compose_cfg(["experiment=contentvec_demo"])
    assert cfg.model.cond_layer_norm_init == "mean_speaker"


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (["task=hubert", "task.length_check=warning"], "[raise, warn, ignore]"),
        (["experiment=sv_demo", "task.scoring=plda"], "[cosine, crop_distance, syncnet_reference]"),
        (
            ["task=embedding_enhancement", "task.list_format=test"],
            "[normal, triplet, distribution]",
        ),
        (
            ["task=embedding_enhancement", "task.session_rule=dir"],
            "[auto, librispeech, parent, none]",
        ),
    ],
)
def test_task_choice_fields_fail_at_composition(overrides, allowed):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(overrides)
    msg = str(e.value) + str(e.value.__cause__)
    assert f"expected one of {allowed}" in msg and overrides[1].split("=")[0] in msg


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("common.precision=fp8", "[fp32, bf16, fp16]"),
        ("common.log_format=json", "[tqdm, simple, none]"),
        ("distributed.backend=mpi", "[auto, nccl, gloo]"),
    ],
)
def test_top_level_choice_fields_fail_at_composition(override, allowed):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["task=speaker_verification", override])
    msg = str(e.value) + str(e.value.__cause__)
    assert f"expected one of {allowed}" in msg and override.split("=")[0] in msg


def test_task_choice_fields_reach_the_task_as_strings():
    from speechkit.registry import TASK_REGISTRY

    cfg = compose_cfg(["task=hubert", "task.length_check=warn", "task.data=/nonexistent"])
    _, task_cfg = TASK_REGISTRY.resolve_config(cfg.task)
    assert task_cfg.length_check == "warn" and type(task_cfg.length_check) is str


def test_old_registry_names_compose_to_canonical_ones():
    cfg = compose_cfg(["experiment=sv_demo", "criterion=aamsoftmax"])
    assert cfg.criterion._name == "aam_softmax"
    cfg = compose_cfg(["task=embedding_enhancement", "criterion=enh_mse"])
    assert cfg.criterion._name == "embedding_mse"
    # the task's default criterion, whatever name the task registered it under
    assert compose_cfg(["task=speaker_verification"]).criterion._name == "aam_softmax"
    assert compose_cfg(["task=embedding_enhancement"]).criterion._name == "embedding_cosine"


def test_batch_size_lives_in_dataset_only():
    """Presets set the batch size once, in ``dataset`` (the tasks' ``default_batch_size`` is
    the fallback for a null ``dataset.batch_size``)."""
    for name in EXPERIMENTS:
        text = yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())
        task_keys = set(text.get("task") or {})
        assert not task_keys & {"batch_size", "default_batch_size", "max_tokens"}, name
