"""The ``hubert`` criterion against fairseq's formulas computed directly from the model outputs."""

from __future__ import annotations

import math

import pytest
import torch

from speechkit.criterions.hubert_criterion import (
    HubertCriterion,
    HubertCriterionConfig,
    count_correct,
)
from speechkit.models.hubert import HubertConfig, HubertModel

TINY = dict(
    conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2",
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=4,
    final_dim=16,
    conv_pos=16,
    conv_pos_groups=4,
    dropout=0.0,
    attention_dropout=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
    encoder_layerdrop=0.0,
    num_classes=[12, 7],
    label_rate=100.0,
)


def sample(B=2, S=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "id": torch.arange(B),
        "net_input": {"source": torch.randn(B, S, generator=g)},
        "target_list": [
            torch.randint(4, 12, (B, 50), generator=g),
            torch.randint(4, 7, (B, 50), generator=g),
        ],
        "mask_seed": 99,
    }


def test_count_correct_ignores_constant_rows():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 0.0]])
    correct, n = count_correct(logits)
    # row 0 correct; row 1 wrong; row 2 constant (argmax and argmin 0); row 3 argmax 0 (first max)
    assert n == 4 and int(correct) == 2


@pytest.mark.parametrize("nomask_weight", [0.0, 0.5])
def test_loss_equals_weighted_cross_entropy_plus_feature_penalty(nomask_weight):
    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**TINY))
    crit = HubertCriterion(
        HubertCriterionConfig(pred_nomask_weight=nomask_weight, loss_weights=[10.0])
    )
    s = sample()
    loss, sample_size, log = crit(model, s)

    with torch.no_grad():
        out = model(
            **s["net_input"],
            target_list=s["target_list"],
            generator=torch.Generator().manual_seed(99),
        )
    expected = torch.zeros((), dtype=torch.float64)
    n_m = out["logit_m_list"][0].size(0)
    n_u = out["logit_u_list"][0].size(0)
    for lg in out["logit_m_list"]:  # CE with target column 0, summed over frames
        expected += -torch.log_softmax(lg.double(), -1)[:, 0].sum()
    if nomask_weight > 0:
        for lg in out["logit_u_list"]:
            expected += nomask_weight * -torch.log_softmax(lg.double(), -1)[:, 0].sum()
    size = n_m + (n_u if nomask_weight > 0 else 0)
    expected += 10.0 * out["features_pen"].detach().double() * size
    assert sample_size == size and n_m > 0 and n_u > 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)

    metrics = HubertCriterion.reduce_metrics(log)
    assert metrics["loss"] == pytest.approx(float(expected) / size / math.log(2), rel=1e-5)
    correct = sum(int(count_correct(lg)[0]) for lg in out["logit_m_list"])
    assert metrics["accuracy"] == pytest.approx(100.0 * correct / (2 * n_m))
    assert set(metrics) >= {"loss_m_0", "loss_m_1", "loss_u_0", "acc_m_1", "acc_u_1"}


def test_positive_weight_on_skipped_logits_is_a_config_error():
    from speechkit.errors import ConfigError

    model = HubertModel(HubertConfig(**{**TINY, "skip_nomask": True}))
    crit = HubertCriterion(HubertCriterionConfig(pred_nomask_weight=1.0))
    with pytest.raises(ConfigError, match="pred_nomask_weight"):
        crit(model, sample())
