"""``common.compile=true`` (torch.compile of the training unit) on the toy task, CPU.

One compiled trainer run costs a compilation (Inductor builds C++ kernels; tens of seconds on a
loaded 2-core machine, less once Inductor's on-disk graph cache is warm), so the behaviour is
checked in one test: a compiled run's checkpoint has the eager run's keys and close weights,
and a compiled run stopped half-way and resumed ends exactly where the uninterrupted compiled
run ends.
"""

from __future__ import annotations

import pytest
import torch

from speechkit.errors import ConfigError
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import TOY, compose_cfg, load_model_weights

# dropout off: Inductor draws dropout masks with its own RNG, so a compiled run's masks are not
# the eager run's; without dropout both runs do the same arithmetic
RUN = [*TOY, "model.dropout=0", "optimization.lr=0.01", "dataset.batch_size=16"]


def run(save_dir, *overrides) -> Trainer:
    cfg = compose_cfg([*RUN, f"checkpoint.save_dir={save_dir}", *overrides])
    seed_everything(cfg.common.seed)
    task, model, criterion = build_components(cfg)
    trainer = Trainer(cfg, task, model, criterion)
    trainer.train()
    return trainer


def test_compiled_run_matches_eager_and_resumes_exactly(tmp_path):
    torch._dynamo.reset()
    eager = run(tmp_path / "eager", "optimization.max_update=8")
    compiled = run(tmp_path / "compiled", "optimization.max_update=8", "common.compile=true")
    assert type(compiled.wrapped).__name__ == "OptimizedModule"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really compiled
    a = load_model_weights(tmp_path / "eager" / "checkpoint_last.pt")
    b = load_model_weights(tmp_path / "compiled" / "checkpoint_last.pt")
    assert list(b) == list(a)  # the plain module's keys: no "_orig_mod." prefix
    # Inductor fuses and reorders float32 reductions (tanh MLP, summed squared error), so the
    # weights after 8 updates differ from eager by float rounding only (3e-8 measured)
    for k in a:
        print(k, (b[k] - a[k]).abs().max().item())
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert eager.wrapped is eager.module  # and the eager one did not

    part = tmp_path / "part"
    run(part, "optimization.max_update=4", "common.compile=true")
    resumed = run(part, "optimization.max_update=8", "common.compile=true")
    assert resumed.num_updates == 8
    c = load_model_weights(part / "checkpoint_last.pt")
    for k in b:  # the same compiled kernels on the same shapes: bit-identical
        assert torch.equal(c[k], b[k]), k


def test_unknown_compile_mode_is_a_config_error(tmp_path):
    cfg = compose_cfg(
        [
            *RUN,
            f"checkpoint.save_dir={tmp_path}",
            "optimization.max_update=1",
            "common.compile=true",
            "common.compile_mode=fast",
        ]
    )
    task, model, criterion = build_components(cfg)
    with pytest.raises(ConfigError, match="common.compile_mode must be one of"):
        Trainer(cfg, task, model, criterion)
