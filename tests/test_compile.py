"""``common.compile=true`` (torch.compile of the training unit) on the toy task, CPU.

One compiled trainer run costs a compilation (Inductor builds C++ kernels; tens of seconds on a
loaded 2-core machine, less once Inductor's on-disk graph cache is warm), so the behaviour is
checked in one in-process test: a compiled run's checkpoint has the eager run's keys and close
weights, and a compiled run (dropout on) stopped half-way and resumed ends exactly where the
uninterrupted compiled run ends. A second (slow) test trains compiled DDP on two gloo processes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from speechkit.train import build_components
from speechkit.trainer.compile import maybe_compile
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import (
    TOY,
    compose_cfg,
    load_model_weights,
    run_torchrun,
    run_train,
)

# dropout off: Inductor draws dropout masks with its own RNG, so a compiled run's masks are not
# the eager run's; without dropout both runs do the same arithmetic
RUN = [*TOY, "model.dropout=0", "optimization.lr=0.01"]
CPU = torch.device("cpu")


def run(save_dir, *overrides) -> Trainer:
    cfg = compose_cfg(
        [*RUN, "dataset.batch_size=16", f"checkpoint.save_dir={save_dir}", *overrides]
    )
    seed_everything(cfg.common.seed)
    task, model, criterion = build_components(cfg)
    trainer = Trainer(cfg, task, model, criterion)
    trainer.train()
    return trainer


def graphs() -> int:
    """Graphs compiled so far in this process (``torch._dynamo.reset`` does not zero it)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_run_matches_eager_and_resumes_exactly(tmp_path):
    torch._dynamo.reset()
    before = graphs()
    eager = run(tmp_path / "eager", "optimization.max_update=8")
    compiled = run(tmp_path / "compiled", "optimization.max_update=8", "common.compile=true")
    assert type(compiled.wrapped).__name__ == "OptimizedModule"
    assert graphs() > before  # it really compiled
    a = load_model_weights(tmp_path / "eager" / "checkpoint_last.pt")
    b = load_model_weights(tmp_path / "compiled" / "checkpoint_last.pt")
    assert list(b) == list(a)  # the plain module's keys: no "_orig_mod." prefix
    # Inductor fuses and reorders float32 reductions (tanh MLP, summed squared error), so the
    # weights after 8 updates differ from eager by float rounding only (3e-8 measured)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert eager.wrapped is eager.module  # and the eager one did not

    # resume, with dropout on: Inductor's dropout seeds are drawn from torch's generator, whose
    # state the checkpoint restores; same kernels, same shapes, same masks: bit-identical
    drop = ["common.compile=true", "model.dropout=0.2"]
    run(tmp_path / "full", "optimization.max_update=8", *drop)
    run(tmp_path / "part", "optimization.max_update=4", *drop)
    resumed = run(tmp_path / "part", "optimization.max_update=8", *drop)
    assert resumed.num_updates == 8
    full = load_model_weights(tmp_path / "full" / "checkpoint_last.pt")
    part = load_model_weights(tmp_path / "part" / "checkpoint_last.pt")
    for k in full:
        assert torch.equal(part[k], full[k]), k


class Scheduled(torch.nn.Module):
    """A forward that reads a per-update counter, as ContentVec's loss weight or AAM ramps do."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.num_updates = 0

    def forward(self, x):
        return self.linear(x) * (1.0 + 0.01 * self.num_updates)


def test_per_update_counter_does_not_recompile_every_update():
    torch._dynamo.reset()
    before = graphs()
    module = Scheduled()
    compiled = maybe_compile(module, SimpleNamespace(compile=True, compile_mode="default"), CPU)
    x = torch.randn(3, 4)
    for n in range(12):  # as Criterion.set_num_updates: a plain int attribute
        module.__dict__["num_updates"] = n
        torch.testing.assert_close(compiled(x), module(x), rtol=1e-5, atol=1e-6)
    # the first value is specialised, the next one makes it symbolic: 2 graphs, not 12 (or
    # torch's recompile limit, 8, followed by eager calls)
    assert graphs() - before <= 2


def test_unknown_compile_mode_fails_at_composition(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg([*RUN, f"checkpoint.save_dir={tmp_path}", "common.compile_mode=fast"])
    msg = str(e.value) + str(e.value.__cause__)
    assert "expected one of [default, reduce-overhead, max-autotune," in msg
    assert "common.compile_mode" in msg


@pytest.mark.slow
def test_compiled_ddp_equals_one_eager_process(tmp_path):
    """torch.compile(DDP(model + criterion)) on 2 gloo ranks, with gradient accumulation (DDP's
    no_sync reached through the compiled wrapper), ends where one eager process ends."""
    common = [*RUN, "optimization.max_update=6", "optimization.update_freq=2"]
    run_train(*common, "dataset.batch_size=16", f"checkpoint.save_dir={tmp_path / 'one'}")
    proc = run_torchrun(
        *common,
        "dataset.batch_size=8",
        "distributed.world_size=2",
        "common.compile=true",
        f"checkpoint.save_dir={tmp_path / 'two'}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = load_model_weights(tmp_path / "one" / "checkpoint_last.pt")
    b = load_model_weights(tmp_path / "two" / "checkpoint_last.pt")
    assert list(b) == list(a)
    for k in a:  # float rounding only (6e-8 measured): compiled kernels, 2-rank gradient sums
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
