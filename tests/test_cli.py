"""`python -m speechkit.train` end to end: user modules, config errors, bad paths."""

from __future__ import annotations

from tests.helpers import REPO_ROOT, TOY, load_model_weights, run_train


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
