"""HuBERT as a template that ContentVec extends: ContentVec's state-dict keys are the ones it had
before the encoder took over its conditional layers, ``encoder.forward`` runs every layer of a
ContentVec model, a seeded ContentVec draws HuBERT's weights as HuBERT does, and the feature
extractor reaches every layer of a full ContentVec checkpoint given a speaker embedding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from speechkit.data.spk2info import SpeakerInfo, save_spk2info
from speechkit.errors import ConfigError, DataError
from speechkit.inference.hubert_features import HubertFeatureExtractor
from speechkit.interop.fairseq import save_fairseq_checkpoint
from speechkit.models.contentvec import (
    ConditionalTransformerEncoder,
    ContentVecConfig,
    ContentVecModel,
)
from speechkit.models.hubert import HubertConfig, HubertModel

SMALL = dict(
    conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2",
    encoder_layers=3,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=4,
    final_dim=16,
    conv_pos=16,
    conv_pos_groups=4,
    num_classes=[12],
)
CV = dict(encoder_layers_1=2, spk_dim=6, ctr_layers=[-2], num_negatives=5)

# sorted(state_dict()) of this config, printed by the code before the conditional encoder
# existed (ContentVec then appended its layers to a plain TransformerEncoder)
KEYS_CONFIG = dict(
    conv_feature_layers="[(8,10,5)] + [(8,3,2)]",
    encoder_layers=1,
    encoder_layers_1=1,
    encoder_embed_dim=8,
    encoder_ffn_embed_dim=16,
    encoder_attention_heads=2,
    final_dim=4,
    conv_pos=4,
    conv_pos_groups=2,
    num_classes=[6],
    spk_dim=3,
)
KEYS_BEFORE = [
    "encoder.cond_layer_norm.bias_ln.weight",
    "encoder.cond_layer_norm.weight_ln.weight",
    "encoder.layer_norm.bias",
    "encoder.layer_norm.weight",
    "encoder.layers.0.fc1.bias",
    "encoder.layers.0.fc1.weight",
    "encoder.layers.0.fc2.bias",
    "encoder.layers.0.fc2.weight",
    "encoder.layers.0.final_layer_norm.bias",
    "encoder.layers.0.final_layer_norm.weight",
    "encoder.layers.0.self_attn.k_proj.bias",
    "encoder.layers.0.self_attn.k_proj.weight",
    "encoder.layers.0.self_attn.out_proj.bias",
    "encoder.layers.0.self_attn.out_proj.weight",
    "encoder.layers.0.self_attn.q_proj.bias",
    "encoder.layers.0.self_attn.q_proj.weight",
    "encoder.layers.0.self_attn.v_proj.bias",
    "encoder.layers.0.self_attn.v_proj.weight",
    "encoder.layers.0.self_attn_layer_norm.bias",
    "encoder.layers.0.self_attn_layer_norm.weight",
    "encoder.layers.1.fc1.bias",
    "encoder.layers.1.fc1.weight",
    "encoder.layers.1.fc2.bias",
    "encoder.layers.1.fc2.weight",
    "encoder.layers.1.final_layer_norm.bias_ln.weight",
    "encoder.layers.1.final_layer_norm.weight_ln.weight",
    "encoder.layers.1.self_attn.k_proj.bias",
    "encoder.layers.1.self_attn.k_proj.weight",
    "encoder.layers.1.self_attn.out_proj.bias",
    "encoder.layers.1.self_attn.out_proj.weight",
    "encoder.layers.1.self_attn.q_proj.bias",
    "encoder.layers.1.self_attn.q_proj.weight",
    "encoder.layers.1.self_attn.v_proj.bias",
    "encoder.layers.1.self_attn.v_proj.weight",
    "encoder.layers.1.self_attn_layer_norm.bias_ln.weight",
    "encoder.layers.1.self_attn_layer_norm.weight_ln.weight",
    "encoder.pos_conv.0.bias",
    "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.weight_v",
    "feature_extractor.conv_layers.0.0.weight",
    "feature_extractor.conv_layers.0.2.bias",
    "feature_extractor.conv_layers.0.2.weight",
    "feature_extractor.conv_layers.1.0.weight",
    "final_proj.bias",
    "final_proj.weight",
    "label_embs_concat",
    "layer_norm.bias",
    "layer_norm.weight",
    "layer_proj.bias",
    "layer_proj.weight",
    "mask_emb",
]


def contentvec(**overrides) -> ContentVecModel:
    torch.manual_seed(0)
    model = ContentVecModel(ContentVecConfig(**{**SMALL, **CV, **overrides})).eval()
    with torch.no_grad():  # conditional gains away from ~0 so that the speaker matters
        for norm in model.conditional_norms():
            norm.weight_ln.weight.add_(0.5 * torch.randn_like(norm.weight_ln.weight))
    return model


def test_state_dict_keys_are_unchanged():
    model = ContentVecModel(ContentVecConfig(**KEYS_CONFIG))
    assert sorted(model.state_dict()) == KEYS_BEFORE
    assert isinstance(model.encoder, ConditionalTransformerEncoder)
    assert (model.encoder.num_layers, model.encoder.num_conditional_layers) == (1, 1)


def test_contentvec_overrides_steps_not_the_forward():
    assert "forward" not in vars(ContentVecModel)
    assert "extract_features" not in vars(ContentVecModel)
    assert {"stack_views", "predict"} <= set(vars(ContentVecModel))


def test_seeded_contentvec_draws_hubert_weights_like_hubert():
    torch.manual_seed(3)
    hubert = HubertModel(HubertConfig(**SMALL)).state_dict()
    torch.manual_seed(3)
    cv = ContentVecModel(ContentVecConfig(**SMALL, **CV)).state_dict()
    assert set(hubert) < set(cv)
    for key, value in hubert.items():
        assert torch.equal(value, cv[key]), key


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_encoder_forward_runs_every_contentvec_layer(layer_norm_first):
    model = contentvec(layer_norm_first=layer_norm_first)
    wav, spk = torch.randn(2, 6000), torch.randn(2, 6)
    with torch.no_grad():
        out = model(wav, spk_emb=spk, features_only=True, mask=False)
        x, results = model.encoder(out["features"], cond=spk)
        assert torch.equal(x, out["x"])
        assert len(results) == 5 and len(out["hidden_states"]) == 6
        for a, b in zip(results, out["hidden_states"][1:]):
            assert torch.equal(a, b)
        # the model's layer_results are the ordinary layers' (the reference's list)
        assert len(out["layer_results"]) == 3
        for a, b in zip(out["layer_results"], results):
            assert torch.equal(a, b)
        # ordinary layers need no speaker; the conditional ones do
        x3, _ = model.encoder(out["features"], tgt_layer=2)
        assert torch.equal(x3, results[2])
        with pytest.raises(ValueError, match="spk_emb"):
            model.encoder(out["features"])
        with pytest.raises(ConfigError, match="outside 1..5"):
            model.encoder(out["features"], tgt_layer=5, cond=spk)
        # each row is conditioned on its own speaker
        other = spk.clone()
        other[1] = torch.randn(6)
        y, _ = model.encoder(out["features"], cond=other)
        torch.testing.assert_close(y[0], x[0], rtol=0, atol=1e-6)
        assert not torch.allclose(y[1], x[1], atol=1e-3)


def _spk2info(path, speakers: dict[str, np.ndarray]) -> None:
    table = {
        "train": {s: SpeakerInfo(e.astype(np.float32), 75.0, 400.0) for s, e in speakers.items()}
    }
    save_spk2info(path, table)


def test_extractor_reaches_every_layer_of_a_full_contentvec_checkpoint(tmp_path):
    model = contentvec()
    path = save_fairseq_checkpoint(model, None, tmp_path / "cv.pt")
    rng = np.random.default_rng(0)
    speakers = {"spk_a": rng.standard_normal(6), "spk_b": rng.standard_normal(6)}
    _spk2info(tmp_path / "spk2info.dict", speakers)
    ex = HubertFeatureExtractor.from_checkpoint(path, spk2info=tmp_path / "spk2info.dict")
    assert (ex.num_layers, ex.num_conditional_layers, ex.spk_dim) == (3, 2, 6)
    assert ex.info["conditional_layers"] == 2
    wav = torch.randn(7000)
    emb = torch.from_numpy(speakers["spk_a"]).float()
    for layer in range(1, 6):
        with torch.no_grad():
            direct, _ = model.extract_features(wav[None], output_layer=layer, spk_emb=emb[None])
        got = ex.features(wav, layer, spk_emb=emb)
        torch.testing.assert_close(got, direct[0], rtol=0, atol=1e-5)
        # a speaker id of spk2info gives the same features
        assert torch.equal(ex.features(wav, layer, spk_emb="spk_a"), got)
    # a padded batch with one speaker per utterance equals one-by-one extraction
    wavs = [wav, torch.randn(4000), torch.randn(9000)]
    ids = ["spk_a", "spk_b", "spk_a"]
    batch = ex.features_batch(wavs, 5, spk_emb=ids)
    for w, s, f in zip(wavs, ids, batch):
        torch.testing.assert_close(f, ex.features(w, 5, spk_emb=s), rtol=0, atol=1e-5)
    assert not torch.allclose(ex.features(wav, 5, "spk_b"), batch[0], atol=1e-3)
    # errors name the problem
    with pytest.raises(ConfigError, match="speaker-conditioned: pass spk_emb"):
        ex.features(wav, 4)
    with pytest.raises(ConfigError, match="1..5"):
        ex.features(wav, 6, spk_emb=emb)
    with pytest.raises(DataError, match="'nobody' not found"):
        ex.features(wav, 4, spk_emb="nobody")
    with pytest.raises(ValueError, match=r"expected \(6,\)"):
        ex.features(wav, 4, spk_emb=torch.randn(5))
    with pytest.raises(ValueError, match="2 speaker embeddings for 3"):
        ex.features_batch(wavs, 4, spk_emb=ids[:2])


def test_extractor_joint_norms_run_chunks_one_at_a_time(tmp_path):
    model = contentvec(cond_layer_norm_joint=True, layer_norm_first=True)
    cfg = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k != "_name"}
    path = tmp_path / "sk.pt"
    torch.save(
        {"cfg": {"model": {**cfg, "_name": "contentvec"}, "task": {}}, "model": model.state_dict()},
        path,
    )
    ex = HubertFeatureExtractor.from_checkpoint(path)
    assert ex.model.cfg.cond_layer_norm_joint and ex.model.cfg.layer_norm_first
    wavs, spk = [torch.randn(5000), torch.randn(8000)], torch.randn(2, 6)
    batch = ex.features_batch(wavs, 4, spk_emb=spk)
    for w, e, f in zip(wavs, spk, batch):
        with torch.no_grad():
            direct, _ = model.extract_features(w[None], output_layer=4, spk_emb=e[None])
        torch.testing.assert_close(f, direct[0], rtol=0, atol=1e-5)
