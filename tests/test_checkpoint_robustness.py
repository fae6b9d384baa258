"""Checkpoints and skipped updates under bad conditions (issue 12; issue 11 item 7).

NaN input with BatchNorm, non-finite states, damaged ``checkpoint_last.pt``, a full disk, an
unwritable ``checkpoint.save_dir``, misleading load messages, fine-tuning from another model,
the double save at an epoch end, and temporaries left by killed writes.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from speechkit.atomic import atomic_open, output_errors
from speechkit.errors import CheckpointError, ConfigError, OutputError
from speechkit.train import build_components
from speechkit.trainer import checkpoint as ckpt
from speechkit.trainer.checkpoint import (
    CheckpointWriter,
    CorruptCheckpointError,
    atomic_torch_save,
    check_save_dir,
    load_checkpoint_file,
)
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import REPO_ROOT, TOY, clean_env, compose_cfg, run_train


def make_trainer(tmp_path, *overrides):
    if not any(o.startswith("optimization.max_") for o in overrides):
        overrides = ("optimization.max_update=10", *overrides)
    cfg = compose_cfg([*TOY, f"checkpoint.save_dir={tmp_path}", *overrides])
    seed_everything(cfg.common.seed)
    task, model, criterion = build_components(cfg)
    return Trainer(cfg, task, model, criterion)


def toy_batch(trainer, start=0, n=16):
    ds = trainer.task.dataset("train")
    return ds.collater([ds[i] for i in range(start, start + n)])


def one_error_line(stderr: str, prefix: str = "speechkit: error: ") -> str:
    """The single error line of a command's stderr (and no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------------------------
# 1. a skipped update leaves parameters and buffers as they were
def test_skipped_update_restores_batchnorm_statistics(tmp_path):
    t = make_trainer(tmp_path, "model.batchnorm=true", "optimization.max_update=10")
    assert t._train_update([toy_batch(t)])
    before = {k: v.clone() for k, v in t.module.state_dict().items()}
    bad = toy_batch(t, 16)
    bad["x"][3, 2] = float("nan")  # one bad sample, as from one corrupt audio file
    assert not t._train_update([bad])
    after = t.module.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # torch.equal is False for NaN: exact and finite
        assert torch.equal(after[k], v), k
    # the next good update trains on, from finite statistics
    assert t._train_update([toy_batch(t, 32)])
    assert all(torch.isfinite(v).all() for v in t.module.state_dict().values())


def test_nan_input_run_keeps_clean_checkpoints(tmp_path):
    """The issue's run: a NaN input among good ones, BatchNorm, keep-last-N. Every checkpoint
    written is finite and loads; validation does not crash."""
    t = make_trainer(
        tmp_path,
        "model.batchnorm=true",
        "task.nan_input_at=7",
        "optimization.max_update=12",
        "checkpoint.save_interval_updates=3",
        "checkpoint.keep_last_checkpoints=2",
        "dataset.validate_interval_updates=3",
    )
    # update 7 sees NaN once: the batch after the skipped one carries update_num 7 again, so
    # replace the toy's rule by "only the first time"
    real_step = t.task.train_step
    seen = {"nan": 0}

    def step(sample, mc, update_num):
        if update_num == 7 and seen["nan"]:
            return real_step(sample, mc, -2)
        seen["nan"] += update_num == 7
        return real_step(sample, mc, update_num)

    t.task.train_step = step
    metrics = t.train()
    assert seen["nan"] == 1 and t.num_updates == 12
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    names = sorted(p.name for p in tmp_path.glob("checkpoint_*.pt"))
    assert "checkpoint_1_12.pt" in names and "checkpoint_1_9.pt" in names
    for p in tmp_path.glob("checkpoint_*.pt"):
        state = load_checkpoint_file(p)
        assert ckpt.nonfinite_tensors(state) == [], p


# --------------------------------------------------------------------------------------------
# 1. a non-finite state is never written, and clean ones are not pruned
def test_nonfinite_state_is_refused_and_nothing_pruned(tmp_path, caplog):
    t = make_trainer(tmp_path, "model.batchnorm=true", "checkpoint.keep_last_checkpoints=1")
    t.num_updates = 5
    t.save_checkpoint(numbered=True)
    clean = (tmp_path / "checkpoint_last.pt").read_bytes()
    bn = t.model.net[1]
    bn.running_var[4] = float("nan")
    t.num_updates = 6
    with caplog.at_level(logging.ERROR):
        t.save_checkpoint(numbered=True, is_best=True)
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == clean
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == [
        "checkpoint_1_5.pt",
        "checkpoint_last.pt",
    ]
    assert "not writing the checkpoint of epoch 1, update 6" in caplog.text
    assert "model.net.1.running_var" in caplog.text
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 1. auto-resume from a damaged checkpoint_last.pt
def test_resume_falls_back_from_truncated_last(tmp_path):
    common = [*TOY, f"checkpoint.save_dir={tmp_path}", "checkpoint.save_interval_updates=5"]
    run_train(*common, "optimization.max_update=10")
    last = tmp_path / "checkpoint_last.pt"
    data = last.read_bytes()
    last.unlink()  # checkpoint_1_10.pt is a hard link: give last a new, truncated inode
    last.write_bytes(data[: len(data) // 2])
    proc = run_train(*common, "optimization.max_update=12")
    warning = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln and "cannot resume" in ln]
    assert len(warning) == 1, proc.stderr[-3000:]
    assert str(last) in warning[0] and str(tmp_path / "checkpoint_1_10.pt") in warning[0]
    assert "truncated" in warning[0]
    assert "done: 12 updates" in proc.stderr
    assert load_checkpoint_file(last)["train_state"]["num_updates"] == 12


def test_resume_skips_a_damaged_hard_linked_numbered_file(tmp_path):
    t = make_trainer(tmp_path, "checkpoint.keep_last_checkpoints=3")
    for u in (5, 10):
        t.num_updates = u
        t.save_checkpoint(numbered=True)
    last = tmp_path / "checkpoint_last.pt"
    with open(last, "r+b") as f:  # damaged in place: checkpoint_1_10.pt shares the inode
        f.truncate(200)
    state, used = ckpt.load_resume_checkpoint(last)
    assert used == tmp_path / "checkpoint_1_5.pt" and state["train_state"]["num_updates"] == 5
    with pytest.raises(CorruptCheckpointError):  # an explicit restore_file does not fall back
        ckpt.load_resume_checkpoint(last, fallback=False)
    for p in tmp_path.glob("checkpoint_1_*.pt"):
        p.unlink()
    with pytest.raises(CheckpointError, match="no intact numbered checkpoint"):
        ckpt.load_resume_checkpoint(last)


# --------------------------------------------------------------------------------------------
# 2. disk full while writing a checkpoint
_FULL_DISK = """
import builtins, errno, sys
import speechkit.atomic as atomic
real_open, opened = builtins.open, []

class FullDisk:
    # the file system fills up after 3000 bytes of this file
    def __init__(self, f):
        self._f, self._n = f, 0
    def write(self, b):
        if self._n + len(b) > 3000:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._n += len(b)
        return self._f.write(b)
    def __getattr__(self, name):
        return getattr(self._f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

def fake_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if ".checkpoint_last.pt.tmp-" in str(file):
        opened.append(file)
        if len(opened) >= 2:  # the first checkpoint fits, the second does not
            return FullDisk(f)
    return f

atomic.open = fake_open
sys.argv = ["speechkit.train", *sys.argv[1:]]
from speechkit.train import cli_main
cli_main()
"""


def test_disk_full_checkpoint_is_one_line_and_keeps_previous(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _FULL_DISK,
            *TOY,
            f"checkpoint.save_dir={tmp_path}",
            "optimization.max_update=10",
            "checkpoint.save_interval_updates=5",
        ],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert line.startswith(f"speechkit: error: {tmp_path / 'checkpoint_last.pt'}: cannot write: ")
    assert "no space left on the device (needs about " in line
    assert "written before the error" in line and f"free in {tmp_path}" in line
    state = load_checkpoint_file(tmp_path / "checkpoint_last.pt")
    assert state["train_state"]["num_updates"] == 5
    assert leftovers(tmp_path) == []


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_file_size_limit_is_one_line(tmp_path):
    """A real kernel refusal (EFBIG from ``ulimit -f``): the checkpoint (~1 MB) cannot be
    written, everything else (logs, config) can."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechkit.train",
            *TOY,
            "model.hidden=20000",
            f"checkpoint.save_dir={tmp_path}",
            "optimization.max_update=2",
        ],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert f"{tmp_path / 'checkpoint_last.pt'}: cannot write: file too large" in line
    assert "ulimit -f" in line and "needs about" in line
    assert not (tmp_path / "checkpoint_last.pt").exists()
    assert leftovers(tmp_path) == []


def test_atomic_open_raises_output_error(tmp_path, monkeypatch):
    """Every writer of speechkit.atomic gets OutputError (a SpeechkitError and an OSError)."""
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputError, match=r"out.txt: cannot write: no space left") as info:
        with atomic_open(target, "w", size_hint=10_000) as f:
            f.write("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert "needs about 10.0 kB" in str(info.value)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    # an unrelated error of the caller's block is not disguised as an output error
    with pytest.raises(FileNotFoundError):
        with atomic_open(target, "w"):
            raise FileNotFoundError(errno.ENOENT, "No such file", "input.wav")
    # a folder that is a regular file
    with pytest.raises(OutputError, match="is not a folder"):
        atomic_torch_save({"w": torch.ones(2)}, target / "sub" / "c.pt")
    # writers with their own temporaries get the same message
    with pytest.raises(OutputError, match=r"feats.npy: cannot write: no space left .*needs about"):
        with output_errors(tmp_path / "feats.npy", size_hint=4096):
            raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------------------------
# 3. unwritable checkpoint.save_dir
def test_save_dir_under_a_regular_file_is_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    proc = run_train(
        *TOY, f"checkpoint.save_dir={blocker / 'run'}", "optimization.max_update=2", check=False
    )
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert line == (
        f"speechkit: error: checkpoint.save_dir={blocker / 'run'}: cannot create the folder: "
        f"{blocker} is a regular file; expected a writable folder"
    )
    assert "task toy_regression" not in proc.stderr  # before any work


def test_check_save_dir_read_only(tmp_path, monkeypatch):
    assert check_save_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    ro = tmp_path / "ro"
    ro.mkdir()

    def read_only(*args, **kwargs):  # a read-only mount (chmod does not stop root)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckpt.os, "open", read_only)
    with pytest.raises(ConfigError) as info:
        check_save_dir(ro)
    assert str(info.value) == (
        f"checkpoint.save_dir={ro}: cannot write in the folder (Read-only file system); "
        "expected a writable folder"
    )
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a regular file; expected a writable folder"):
        check_save_dir(tmp_path / "file")


# --------------------------------------------------------------------------------------------
# 4. load messages say what the file is
def test_load_messages_distinguish_empty_truncated_foreign_and_unsafe(tmp_path):
    good = tmp_path / "good.pt"
    atomic_torch_save({"model": {"w": torch.ones(1000)}}, good)
    cases = {
        "empty.pt": b"",
        "truncated.pt": good.read_bytes()[:2000],
        "random.pt": bytes(range(7, 256)) * 20,
        "page.pt": b"<html><body>404 Not Found</body></html>\n",
    }
    expected = {
        "empty.pt": "the file is empty (0 bytes)",
        "truncated.pt": "truncated or damaged (2.0 kB, the zip archive has no central directory",
        "random.pt": "not a torch checkpoint (4980 bytes; it starts with bytes 07 08 09 0a",
        "page.pt": "not a torch checkpoint (40 bytes; it looks like text: '<html><body>",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorruptCheckpointError) as info:
            load_checkpoint_file(tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(f"cannot read checkpoint {tmp_path / name}: "), msg
        assert expected[name] in msg, msg
        assert "could execute code" not in msg
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "f": os.system}, evil)
    with pytest.raises(CheckpointError, match=r"refusing to load .*GLOBAL posix.system") as info:
        load_checkpoint_file(evil)
    assert not isinstance(info.value, CorruptCheckpointError)


# --------------------------------------------------------------------------------------------
# 5. fine-tuning from another model's checkpoint
def test_finetune_from_another_model_is_one_line(tmp_path):
    from speechkit.models.resnet_se import ResNetSE34L, ResNetSE34LConfig

    other = tmp_path / "resnet.pt"
    model = ResNetSE34L(ResNetSE34LConfig())
    cfg = {"model": {"_name": "resnet_se34l", "n_mels": 40}}
    atomic_torch_save({"cfg": cfg, "model": model.state_dict(), "criterion": {}}, other)
    proc = run_train(
        *TOY,
        f"checkpoint.save_dir={tmp_path / 'run'}",
        f"checkpoint.finetune_from_model={other}",
        "optimization.max_update=1",
        check=False,
    )
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert line.startswith(
        f"speechkit: error: {other}: holds a 'resnet_se34l' model that does not fit a "
        "'toy_mlp' model built by this run (missing net.0.weight, net.0.bias, net.3.weight, "
        "... (4 in all); unexpected "
    ), line


def test_resume_with_other_shapes_names_the_keys(tmp_path):
    run_train(*TOY, f"checkpoint.save_dir={tmp_path}", "optimization.max_update=2")
    t = make_trainer(tmp_path, "model.hidden=16", "optimization.max_update=4")
    with pytest.raises(CheckpointError) as info:
        t.load_checkpoint()
    assert str(info.value) == (
        f"{tmp_path / 'checkpoint_last.pt'}: holds a 'toy_mlp' model that does not fit a "
        "'toy_mlp' model built by this run (other shape (checkpoint vs this run) "
        "net.0.weight (32, 8) vs (16, 8), net.0.bias (32,) vs (16,), net.3.weight (1, 32) vs "
        "(1, 16)); expected a checkpoint of the same model architecture"
    )


# --------------------------------------------------------------------------------------------
# 6. a checkpoint interval that falls on an epoch end is written once
def test_interval_on_epoch_end_writes_once(tmp_path):
    t = make_trainer(  # 16 updates per epoch
        tmp_path,
        "optimization.max_epoch=2",
        "checkpoint.save_interval_updates=16",
        "checkpoint.keep_last_checkpoints=-1",
        "dataset.validate_interval_updates=16",
    )
    writes = []
    save = t.writer.save

    def counting_save(state, epoch, num_updates, numbered, is_best):
        writes.append((epoch, num_updates, numbered, is_best, state["train_state"]["epoch"]))
        return save(state, epoch, num_updates, numbered, is_best)

    t.writer.save = counting_save
    t.train()
    # one write per epoch end: numbered (the interval) and best (the validation at update 16)
    assert writes == [(1, 16, True, True, 2), (2, 32, True, True, 3)]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*_*.pt")) == [
        "checkpoint_1_16.pt",
        "checkpoint_2_32.pt",
    ]


# --------------------------------------------------------------------------------------------
# 7. temporaries of killed writes are removed at start, live ones are not
def test_stale_temporaries_removed_at_start(tmp_path):
    script = textwrap.dedent(f"""
        import time, torch
        from speechkit.trainer import checkpoint
        def slow_fsync(fd):
            print("writing", flush=True)
            time.sleep(60)
        checkpoint.os.fsync = slow_fsync
        import speechkit.atomic
        speechkit.atomic.os.fsync = slow_fsync
        checkpoint.atomic_torch_save({{"w": torch.zeros(500_000)}},
                                     {str(tmp_path / "checkpoint_last.pt")!r})
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=clean_env(), stdout=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".checkpoint_last.pt.tmp-")
    size = (tmp_path / stale[0]).stat().st_size
    # a temporary of a live writer (this pytest process) must survive
    live = tmp_path / f".checkpoint_last.pt.tmp-{os.getpid()}-0123abcd"
    live.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(live, (old, old))
    done = run_train(*TOY, f"checkpoint.save_dir={tmp_path}", "optimization.max_update=2")
    assert leftovers(tmp_path) == [live.name]
    freed = ckpt.format_bytes(size)
    assert (
        f"removed 1 stale temporary file(s) of interrupted checkpoint writes from {tmp_path} "
        f"({freed} freed)"
    ) in done.stderr


def test_stale_sweep_keeps_new_and_foreign_files(tmp_path, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 3600
    names = {
        f".checkpoint_3_30.pt.tmp-{dead.pid}-00aa11bb": old,  # stale: removed
        f".checkpoint_last.pt.tmp-{dead.pid}-22cc33dd": time.time() + 5,  # newer than start
        f".train.log.tmp-{dead.pid}-44ee55ff": old,  # not a checkpoint temporary
        "checkpoint_last.pt": old,
    }
    for name, mtime in names.items():
        (tmp_path / name).write_bytes(b"0123456789")
        os.utime(tmp_path / name, (mtime, mtime))
    writer = CheckpointWriter(tmp_path)
    assert writer.remove_stale_temporaries() == (1, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(list(names)[1:])


def test_score_file_and_streamed_features_report_a_full_disk_in_one_line(tmp_path):
    """``eval_eer.py --scores`` and ``speechkit.extract``'s streamed ``.npy`` write through
    their own code paths: a real EFBIG (``ulimit -f``) gives OutputError and leaves nothing."""
    snippet = textwrap.dedent(
        """
        import sys
        import numpy as np
        from speechkit.errors import OutputError
        from speechkit.inference.feature_dump import ConcatFeatureWriter
        from speechkit.metrics.scoring import write_score_file
        out = sys.argv[1]
        n = 20_000  # ~1 MB of score lines, over the 200 kB limit
        try:
            write_score_file(out + "/scores.txt", np.zeros(n), None, ["a" * 20] * n, ["b" * 20] * n)
        except OutputError as e:
            print("SCORES", e)
        try:
            with ConcatFeatureWriter(out + "/f.npy", out + "/f.len") as w:
                w.add(np.zeros((100_000, 4), np.float32))  # 1.6 MB
        except OutputError as e:
            print("FEATS", e)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", snippet, str(tmp_path)],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"SCORES {tmp_path / 'scores.txt'}: cannot write: file too large")
    assert lines[1].startswith(f"FEATS {tmp_path / 'f.npy'}: cannot write: file too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary
