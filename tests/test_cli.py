"""`python -m speechkit.train` end to end: user modules, config errors, bad paths."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers import REPO_ROOT, TOY, USER_DIR, load_model_weights, run_train


def test_user_dir_module_trains(tmp_path):
    proc = run_train(*TOY, f"checkpoint.save_dir={tmp_path}", "optimization.max_update=4")
    assert "done: 4 updates" in proc.stderr
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "train.log").is_file()
    weights = load_model_weights(tmp_path / "checkpoint_last.pt")
    assert "net.0.weight" in weights


def _last_line(stderr: str) -> str:
    return [ln for ln in stderr.strip().splitlines() if ln.strip()][-1]


def test_unknown_model_name(tmp_path):
    proc = run_train(
        *[o for o in TOY if not o.startswith("model=")],
        "model=resnet_se35l",
        f"checkpoint.save_dir={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0
    assert "Could not find 'model/resnet_se35l'" in proc.stderr
    assert "toy_mlp" in proc.stderr  # the available options are listed
    assert not (tmp_path / "checkpoint_last.pt").exists()


def test_misspelt_config_key(tmp_path):
    proc = run_train(
        *TOY, "optimization.max_updat=3", f"checkpoint.save_dir={tmp_path}", check=False
    )
    assert proc.returncode != 0
    assert "Could not override 'optimization.max_updat'" in proc.stderr
    assert "Key 'max_updat' not in 'OptimizationConfig'" in proc.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_misspelt_model_field(tmp_path):
    proc = run_train(*TOY, "model.hiden=3", f"checkpoint.save_dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "Key 'hiden' not in 'ToyMLPConfig'" in proc.stderr


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nope.pt"
    proc = run_train(
        *TOY, f"task.data={missing}", f"checkpoint.save_dir={tmp_path / 'run'}", check=False
    )
    assert proc.returncode == 2
    assert _last_line(proc.stderr) == f"speechkit: error: task.data={missing}: file not found"


def test_missing_user_dir(tmp_path):
    proc = run_train("common.user_dir=/no/such/plugin", "task=x", check=False)
    assert proc.returncode == 2
    assert _last_line(proc.stderr) == (
        "speechkit: error: common.user_dir=/no/such/plugin: no such file or folder"
    )


def test_world_size_mismatch(tmp_path):
    proc = run_train(
        *TOY,
        "distributed.world_size=4",
        f"checkpoint.save_dir={tmp_path}",
        "optimization.max_update=1",
        check=False,
    )
    assert proc.returncode == 2
    assert "distributed.world_size=4 but the launcher (single) started 1 process(es)" in (
        _last_line(proc.stderr)
    )


def test_speaker_verification_bad_lists(tmp_path, shared_data):
    """The real task: a missing train list and a malformed line, each one clear line."""
    common = [
        "experiment=sv_demo",
        f"task.root={shared_data}",
        f"task.test_list={shared_data / 'lists/split_test_trials.txt'}",
        f"checkpoint.save_dir={tmp_path / 'run'}",
    ]
    missing = tmp_path / "nope.txt"
    proc = run_train(*common, f"task.train_list={missing}", check=False)
    assert proc.returncode == 2
    assert _last_line(proc.stderr) == f"speechkit: error: {missing}: list file not found"

    bad = tmp_path / "bad.txt"
    bad.write_text("ls367 speech/a.wav\nls367speech/b.wav\n")
    proc = run_train(*common, f"task.train_list={bad}", check=False)
    assert proc.returncode == 2
    assert _last_line(proc.stderr).startswith(
        f"speechkit: error: {bad}:2: expected 'speaker_id relative/path.wav'"
    )
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_readme_user_model_example_trains(shared_data, tmp_path):
    """The README's "register your own model" example, copied verbatim into a .py file, trains
    through the documented command line (common.user_dir=FILE model=tiny_xvector)."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("A complete example, `my_speaker_net.py`", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    module = tmp_path / "my_speaker_net.py"
    module.write_text(code)
    lists = shared_data / "lists"
    proc = run_train(
        f"common.user_dir={module}",
        "experiment=sv_demo",
        "model=tiny_xvector",
        "model.channels=32",
        f"task.root={shared_data}",
        f"task.train_list={lists / 'split_train_list.txt'}",
        f"task.test_list={lists / 'split_test_trials.txt'}",
        "dataset.disable_validation=true",
        "optimization.max_update=3",
        "common.cpu=true",
        "common.log_format=simple",
        "common.tensorboard_logdir=null",
        f"checkpoint.save_dir={tmp_path / 'run'}",
        timeout=300,
    )
    assert "done: 3 updates" in proc.stderr
    weights = load_model_weights(tmp_path / "run" / "checkpoint_last.pt")
    assert weights["tdnn.0.weight"].shape == (32, 40, 5) and weights["fc.weight"].shape == (
        128,
        64,
    )  # the preset embed_dim


# ---------------------------------------------------------------------------------------------
# task-implied defaults and --help
def test_bare_task_fails_only_on_its_data(tmp_path):
    """``task=contentvec`` alone selects the task's model and criterion; the one error line
    says which files the task expects and which keys are not set."""
    proc = run_train("task=contentvec", f"checkpoint.save_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert "You must specify" not in proc.stderr
    line = _last_line(proc.stderr)
    assert line.startswith("speechkit: error: task contentvec needs task.data=DIR with ")
    for expected in ("train.tsv", "train.km", "dict.km.txt", "task.spk2info=FILE"):
        assert expected in line
    assert line.endswith("; not set: task.data, task.spk2info")
    assert not (tmp_path / "run").exists()  # the folder it created for train.log is gone again


def test_failed_start_keeps_an_existing_save_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    proc = run_train("task=contentvec", f"checkpoint.save_dir={run_dir}", check=False)
    assert proc.returncode == 2
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / "train.log").exists()  # a folder the user made keeps the run's log


def test_task_defaults_compose_and_are_overridable():
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["task=contentvec"])
    assert (cfg.model._name, cfg.criterion._name) == ("contentvec", "contentvec")
    cfg = compose_cfg(["task=speaker_verification"])
    assert (cfg.model._name, cfg.criterion._name) == ("resnet_se34l", "aam_softmax")
    # explicit choices win, each on its own
    cfg = compose_cfg(["task=speaker_verification", "model=ecapa_tdnn"])
    assert (cfg.model._name, cfg.criterion._name) == ("ecapa_tdnn", "aam_softmax")
    cfg = compose_cfg(["task=hubert", "criterion=contentvec", "model=hubert_large"])
    assert (cfg.model._name, cfg.criterion._name) == ("hubert_large", "contentvec")
    # an experiment preset keeps its own model and criterion (not the task's defaults) ...
    cfg = compose_cfg(["experiment=sv_ecapa_aam_vox2"])
    assert (cfg.task._name, cfg.model._name) == ("speaker_verification", "ecapa_tdnn")
    cfg = compose_cfg(["experiment=sv_demo"])
    assert (cfg.model._name, cfg.criterion._name) == ("resnet_se34l", "angle_proto")
    # ... also through a preset that extends another, and the command line still wins over it
    cfg = compose_cfg(["experiment=hubert_base_iter2", "model=hubert_large"])
    assert (cfg.task._name, cfg.model._name, cfg.criterion._name) == (
        "hubert", "hubert_large", "hubert"
    )  # fmt: skip


def test_every_builtin_task_default_is_registered():
    from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY, TASK_REGISTRY
    from tests.helpers import prepare_registries

    prepare_registries()
    builtin = [
        "contentvec", "embedding_enhancement", "hubert", "speaker_verification", "syncnet",
        "target_speaker_separation",
    ]  # fmt: skip
    for task in builtin:
        defaults = TASK_REGISTRY.defaults(task)
        assert set(defaults) == {"model", "criterion"}, task
        assert defaults["model"] in MODEL_REGISTRY, task
        assert defaults["criterion"] in CRITERION_REGISTRY, task
    assert TASK_REGISTRY.defaults("toy_regression") == {}


def test_task_without_defaults_still_asks_for_a_model(tmp_path):
    proc = run_train(
        *[o for o in TOY if not o.startswith("criterion=")],
        f"checkpoint.save_dir={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0
    assert "You must specify 'criterion', e.g, criterion=<OPTION>" in proc.stderr
    assert "squared_error" in proc.stderr  # the available names are listed


def test_no_task_asks_for_a_task():
    proc = run_train(check=False)
    assert proc.returncode != 0
    assert "You must specify 'task', e.g, task=<OPTION>" in proc.stderr


_USER_TASK = """
from dataclasses import dataclass

from speechkit.registry import register_task
from tests.user_dir_example import ToyRegressionConfig, ToyRegressionTask


@dataclass
class DefaultsToyConfig(ToyRegressionConfig):
    pass


@register_task(
    "defaults_toy",
    dataclass=DefaultsToyConfig,
    default_model="toy_mlp",
    default_criterion="squared_error",
)
class DefaultsToyTask(ToyRegressionTask):
    pass
"""


def test_user_dir_task_defaults_train(tmp_path):
    """A task registered in a user module with defaults trains without model=/criterion=."""
    module = tmp_path / "defaults_toy.py"
    module.write_text(_USER_TASK)
    common = [
        f"common.user_dir={module}",
        "task=defaults_toy",
        "common.cpu=true",
        "common.log_format=simple",
        "common.tensorboard_logdir=null",
        "optimization.max_update=2",
    ]
    proc = run_train(*common, f"checkpoint.save_dir={tmp_path / 'run'}")
    assert "model toy_mlp" in proc.stderr and "criterion squared_error" in proc.stderr
    assert "done: 2 updates" in proc.stderr
    # a multirun sweep resolves the defaults per job as well
    proc = run_train(
        "-m",
        *common,
        "common.seed=1,2",
        f"checkpoint.save_dir={tmp_path}/sweep_${{common.seed}}",
        f"hydra.sweep.dir={tmp_path}/multirun",
    )
    assert proc.stderr.count("done: 2 updates") == 2
    assert (tmp_path / "sweep_1" / "checkpoint_last.pt").is_file()
    assert (tmp_path / "sweep_2" / "checkpoint_last.pt").is_file()


def test_help_lists_groups_and_names_without_composing(capsys):
    from tests.helpers import clean_env, prepare_registries, train_cmd

    # an unknown task is no error: nothing is composed; a user module's names are listed too
    proc = subprocess.run(
        train_cmd("--help", "task=nonexistent", f"common.user_dir={USER_DIR}"),
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("usage: python -m speechkit.train")
    groups = {ln.split()[0] for ln in out.splitlines() if ln.startswith("  ") and ln[2] != " "}
    assert {"task", "model", "criterion", "optimizer", "lr_scheduler", "experiment"} <= groups
    for name in ("contentvec", "resnet_se34l", "aam_softmax", "polynomial_decay", "hubert_demo"):
        assert name in out
    assert "toy_regression" in out and "toy_mlp" in out
    assert "adam (default)" in out
    assert re.search(r"^  contentvec +contentvec, contentvec$", out, re.M)
    assert re.search(r"^  speaker_verification +resnet_se34l, aam_softmax$", out, re.M)
    assert re.search(r"^  toy_regression +-, -$", out, re.M)
    assert "--hydra-help" in out

    from speechkit.train import exit_if_help

    prepare_registries()
    exit_if_help(["task=hubert"])  # no flag: returns
    with pytest.raises(SystemExit) as e:
        exit_if_help(["-h"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m speechkit.train")


def test_registry_names_unset_required_fields():
    """A composed config that leaves required fields at ``???`` is one ConfigError: a task's
    names what it needs, other groups name the keys (in the config's field order)."""
    from dataclasses import dataclass

    from speechkit.dataclass import SpeechkitDataclass
    from speechkit.errors import ConfigError
    from speechkit.registry import TASK_REGISTRY, Registry
    from tests.helpers import prepare_registries

    @dataclass
    class NeedsConfig(SpeechkitDataclass):
        zeta: str = "???"
        alpha: str = "???"
        size: int = 3

    reg = Registry("widget")
    reg.register("needs", NeedsConfig)(type("Needs", (), {"__init__": lambda self, cfg: None}))
    with pytest.raises(ConfigError, match=r"^widget needs: required widget.zeta, widget.alpha"):
        reg.build({"_name": "needs"})
    assert reg.build({"_name": "needs", "zeta": "a", "alpha": "b"}) is not None

    prepare_registries()
    with pytest.raises(ConfigError) as e:
        TASK_REGISTRY.build({"_name": "hubert", "label_dir": "x"})
    assert str(e.value).startswith("task hubert needs task.data=DIR with train.tsv")
    assert str(e.value).endswith("; not set: task.data")
