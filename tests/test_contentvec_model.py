"""ContentVec model and criterion: conditional layer norm and the contrastive loss against direct
float64 computations, the two-view forward, checkpoint key names and the weight ramp."""

from __future__ import annotations

import math

import pytest
import torch

from speechkit.criterions.contentvec_criterion import (
    ContentVecCriterion,
    ContentVecCriterionConfig,
)
from speechkit.models.contentvec import (
    ConditionalLayerNorm,
    ContentVecConfig,
    ContentVecModel,
    contrastive_logits,
    gather_frames,
    sample_negative_indices,
)

TINY = dict(
    conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2",
    encoder_layers=3,
    encoder_layers_1=2,
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
    num_classes=[12],
    spk_dim=6,
    ctr_layers=[-2],
    num_negatives=5,
    mask_prob=0.5,
    mask_length=3,
)


def cln_float64(x, spk, w_gain, w_bias, eps, joint):
    """Direct loop: statistics per (row, frame) over C, or per frame over (rows, C)."""
    x, spk = x.double(), spk.double()
    gain, bias = spk @ w_gain.double().T, spk @ w_bias.double().T  # (B, C)
    B, T, C = x.shape
    out = torch.empty_like(x)
    for t in range(T):
        if joint:
            v = x[:, t, :]
            mu = v.sum() / (B * C)
            var = ((v - mu) ** 2).sum() / (B * C)
            out[:, t, :] = (v - mu) / math.sqrt(var + eps) * gain + bias
        else:
            for b in range(B):
                v = x[b, t]
                mu = v.sum() / C
                var = ((v - mu) ** 2).sum() / C
                out[b, t] = (v - mu) / math.sqrt(var + eps) * gain[b] + bias[b]
    return out


@pytest.mark.parametrize("joint", [False, True])
def test_conditional_layer_norm_matches_float64(joint):
    torch.manual_seed(0)
    norm = ConditionalLayerNorm(8, spk_dim=4, eps=1e-5, joint=joint)
    with torch.no_grad():
        norm.weight_ln.weight.normal_()
        norm.bias_ln.weight.normal_()
    x = torch.randn(3, 5, 8) * 3 + 1
    spk = torch.randn(3, 4)
    expected = cln_float64(x, spk, norm.weight_ln.weight, norm.bias_ln.weight, 1e-5, joint)
    torch.testing.assert_close(norm(x, spk).double(), expected, rtol=1e-5, atol=1e-5)


def test_joint_statistics_mix_rows_and_default_does_not():
    torch.manual_seed(1)
    x, spk = torch.randn(2, 4, 8), torch.randn(2, 4)
    y = x.clone()
    y[1] = y[1] * 5 + 2  # change only row 1
    per_frame = ConditionalLayerNorm(8, 4, joint=False)
    joint = ConditionalLayerNorm(8, 4, joint=True)
    joint.load_state_dict(per_frame.state_dict())
    torch.testing.assert_close(per_frame(x, spk)[0], per_frame(y, spk)[0])
    assert not torch.allclose(joint(x, spk)[0], joint(y, spk)[0], atol=1e-3)
    # with one row both definitions agree (the reference at batch size 1)
    torch.testing.assert_close(joint(x[:1], spk[:1]), per_frame(x[:1], spk[:1]))


def contrastive_float64(anchor, positive, counts, neg_idx, temperature):
    rows = []
    a, p = anchor.double(), positive.double()
    for r in range(a.size(0)):
        if counts[r] < 2:
            continue
        for t in range(int(counts[r])):
            row = [torch.dot(a[r, t], p[r, t]) / (a[r, t].norm() * p[r, t].norm())]
            for k in neg_idx[r, t].tolist():
                if torch.equal(positive[r, t], anchor[r, k]):
                    row.append(torch.tensor(-math.inf, dtype=torch.float64))
                else:
                    row.append(torch.dot(a[r, t], a[r, k]) / (a[r, t].norm() * a[r, k].norm()))
            rows.append(torch.stack(row) / temperature)
    return torch.stack(rows)


def test_contrastive_logits_match_float64_loop():
    torch.manual_seed(2)
    R, U, D = 4, 7, 5
    anchor, positive = torch.randn(R, U, D), torch.randn(R, U, D)
    counts = torch.tensor([7, 5, 1, 3])
    gen = torch.Generator().manual_seed(3)
    neg_idx = sample_negative_indices(counts, U, 6, gen)
    # make one negative identical to its positive: it must get -inf
    k = int(neg_idx[0, 2, 0])
    positive[0, 2] = anchor[0, k]
    got = contrastive_logits(anchor, positive, counts, neg_idx, 0.1)
    expected = contrastive_float64(anchor, positive, counts, neg_idx, 0.1)
    assert got.shape == (7 + 5 + 3, 7) and got.dtype == torch.float32
    assert torch.isinf(got[2, 1]) and got[2, 1] < 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_negative_indices_cover_the_other_frames_only():
    counts = torch.tensor([2, 5, 9])
    gen = torch.Generator().manual_seed(0)
    idx = sample_negative_indices(counts, 9, 400, gen)
    for r, c in enumerate(counts.tolist()):
        for t in range(c):
            drawn = set(idx[r, t].tolist())
            assert drawn == set(range(c)) - {t}, (r, t, drawn)


def test_gather_frames_keeps_time_order():
    y = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    frames, counts = gather_frames(y, keep)
    assert counts.tolist() == [3, 1]
    assert frames[0, :, 0].tolist() == [0.0, 2.0, 3.0]
    assert frames[1, 0, 0].item() == 8.0


def tiny_model(**overrides) -> ContentVecModel:
    torch.manual_seed(0)
    return ContentVecModel(ContentVecConfig(**{**TINY, **overrides}))


def test_state_dict_has_the_reference_contentvec_keys():
    model = tiny_model()
    sd = model.state_dict()
    C, D = 32, 6
    for i in (3, 4):  # the conditional layers follow the 3 ordinary ones
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            for part in ("weight_ln", "bias_ln"):
                assert sd[f"encoder.layers.{i}.{norm}.{part}.weight"].shape == (C, D)
    assert sd["encoder.cond_layer_norm.weight_ln.weight"].shape == (C, D)
    assert sd["layer_proj.weight"].shape == (16, C) and "layer_proj.bias" in sd
    assert "encoder.layers.5.self_attn.k_proj.weight" not in sd
    assert "encoder.layers.2.self_attn_layer_norm.weight" in sd  # ordinary LayerNorm


def test_two_view_forward_shares_one_mask_and_counts_anchors():
    model = tiny_model()
    B, S = 3, 8000
    torch.manual_seed(5)
    source, source_2 = torch.randn(B, S), torch.randn(B, S)
    spk = torch.randn(B, 6)
    T_label = 50  # 100 Hz labels for 0.5 s
    targets = [torch.randint(0, 12, (B, T_label))]
    gen = torch.Generator().manual_seed(7)
    out = model(
        source,
        source_2=source_2,
        spk_emb=spk,
        target_list=targets,
        generator=gen,
    )
    mask = out["mask_indices"]
    assert mask.shape[0] == 2 * B and torch.equal(mask[:B], mask[B:])
    n_masked = int(mask.sum())
    assert out["logit_m_list"][0].shape == (n_masked, 1 + 12)
    (ctr,) = out["logit_ctr_list"]
    assert ctr.shape == (2 * int((~mask[:B]).sum()), 1 + 5)
    # the same generator seed gives the same masks and negatives (reproducible runs)
    again = model(
        source,
        source_2=source_2,
        spk_emb=spk,
        target_list=targets,
        generator=torch.Generator().manual_seed(7),
    )
    torch.testing.assert_close(again["logit_ctr_list"][0], ctr)


def test_conditional_layers_need_a_speaker_embedding():
    model = tiny_model().eval()
    wav = torch.randn(1, 8000)
    with pytest.raises(ValueError, match="spk_emb"):
        model.extract_features(wav)
    x, _ = model.extract_features(wav, output_layer=3)  # ordinary layers only
    assert x.shape[-1] == 32
    x, _ = model.extract_features(wav, spk_emb=torch.randn(1, 6))
    assert torch.isfinite(x).all()


def test_speaker_embedding_changes_the_conditional_output():
    model = tiny_model().eval()
    wav = torch.randn(1, 8000)
    a, _ = model.extract_features(wav, spk_emb=torch.randn(1, 6))
    b, _ = model.extract_features(wav, spk_emb=torch.randn(1, 6))
    assert not torch.allclose(a, b, atol=1e-4)


def test_contrastive_weight_ramps_with_updates():
    model = tiny_model()
    torch.manual_seed(9)
    B, S = 2, 8000
    sample = {
        "id": torch.arange(B),
        "net_input": {
            "source": torch.randn(B, S),
            "source_2": torch.randn(B, S),
            "spk_emb": torch.randn(B, 6),
        },
        "target_list": [torch.randint(0, 12, (B, 50))],
        "mask_seed": 1234,
    }
    flat = ContentVecCriterion(ContentVecCriterionConfig(loss_weights=[10.0, 0.0]))
    ramp = ContentVecCriterion(ContentVecCriterionConfig(loss_weights=[10.0, 1e-3]))
    capped = ContentVecCriterion(
        ContentVecCriterionConfig(loss_weights=[10.0, 1e-3], ctr_weight_max=0.2)
    )
    for crit in (ramp, capped):
        crit.set_num_updates(500)
    assert ramp.ctr_weight() == pytest.approx(0.5) and capped.ctr_weight() == pytest.approx(0.2)
    loss0, size0, log0 = flat(model, sample)
    loss1, size1, log1 = ramp(model, sample)
    assert size0 == size1 == log1["sample_size"]
    assert log1["ctr_loss"] > 0 and log1["ctr_sample_size"] > 0
    torch.testing.assert_close(
        loss1 - loss0, torch.tensor(0.5 * log1["ctr_loss"]), rtol=1e-4, atol=1e-4
    )
    loss1.backward()
    grad = model.encoder.layers[3].final_layer_norm.weight_ln.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    metrics = ContentVecCriterion.reduce_metrics(log1)
    assert 0 <= metrics["ctr_accuracy"] <= 100 and metrics["ctr_weight"] == pytest.approx(0.5)


def test_mean_speaker_init_starts_as_plain_layer_norm():
    model = tiny_model(cond_layer_norm_init="mean_speaker")
    torch.manual_seed(3)
    speakers = torch.randn(10, 6) + 2.0
    mean = speakers.mean(0)
    model.init_conditional_norms(mean)
    norm = model.encoder.layers[3].self_attn_layer_norm
    x = torch.randn(2, 4, 32)
    plain = torch.nn.functional.layer_norm(x, (32,))
    torch.testing.assert_close(norm(x, mean.expand(2, 6)), plain, rtol=1e-5, atol=1e-5)
    e = speakers[:2]  # another speaker: gain (mean . e) / |mean|^2 on every channel
    gain = (e @ mean / mean.pow(2).sum()).view(2, 1, 1)
    torch.testing.assert_close(norm(x, e), plain * gain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="non-zero"):
        model.init_conditional_norms(torch.zeros(6))
    with pytest.raises(Exception, match="cond_layer_norm_init"):
        tiny_model(cond_layer_norm_init="ones")
