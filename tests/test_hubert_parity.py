"""speechkit HuBERT vs Hugging Face ``transformers.HubertModel`` (independent implementation).

Both models hold the same random weights (mapped through speechkit's converter; every bias and
norm parameter is perturbed so that a swapped or misplaced norm cannot hide behind its 1/0
init), run in eval mode and fp32 on a real LibriSpeech utterance; every hidden state must agree
to 1e-4. HF runs its eager (explicit softmax) attention, speechkit PyTorch's SDPA.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402  (a dev dependency: its absence is a failure, not a skip)

from speechkit.interop.hf_hubert import (  # noqa: E402
    FINAL_PROJ_FILE,
    export_to_transformers,
    hf_to_fairseq_state_dict,
    import_from_transformers,
    to_transformers_model,
)
from speechkit.models.hubert import HubertModel, hubert_base_config, hubert_large_config  # noqa: E402
from speechkit.modules.conv_feature_extractor import ConvFeatureExtractor  # noqa: E402

WAV = "speech/hubert_reference/6313-76958-0021.wav"
TOL = 1e-4


def _waveform(shared_data, seconds: float) -> torch.Tensor:
    wav, sr = sf.read(shared_data / WAV, dtype="float32")
    assert sr == 16000 and wav.shape == (190800,)
    return torch.from_numpy(wav[: int(seconds * sr)]).unsqueeze(0)


def _random_model(cfg, seed: int) -> HubertModel:
    torch.manual_seed(seed)
    model = HubertModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith("weight_g"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def _assert_hidden_states_match(ours: dict, hf_out, n_layers: int) -> None:
    assert len(ours["hidden_states"]) == len(hf_out.hidden_states) == n_layers + 1
    for i, (a, b) in enumerate(zip(ours["hidden_states"], hf_out.hidden_states)):
        assert a.shape == b.shape, i
        err = (a - b).abs().max().item()
        assert err < TOL, f"hidden state {i}: max abs diff {err:.2e}"
        assert a.abs().max().item() > 0.1  # not trivially zero
    err = (ours["x"] - hf_out.last_hidden_state).abs().max().item()
    assert err < TOL, f"final output: max abs diff {err:.2e}"


def test_large_hidden_states_match_transformers(shared_data):
    """HuBERT Large layout: layer-norm conv extractor, 24 pre-LN layers of 1024 (short clip)."""
    cfg = hubert_large_config()
    model = _random_model(cfg, seed=2)
    hf = to_transformers_model(model, attn_implementation="eager")
    assert hf.config.do_stable_layer_norm and hf.config.feat_extract_norm == "layer"
    x = _waveform(shared_data, 1.5)
    with torch.no_grad():
        ours = model(x, mask=False, features_only=True)
        ref = hf(x, output_hidden_states=True)
        # fairseq's output_layer=L stops after layer L: no final LayerNorm, also for pre-LN
        feats, _ = model.extract_features(x, output_layer=3)
    assert ours["x"].shape == (1, model.feature_extractor.output_lengths(x.shape[1]), 1024)
    _assert_hidden_states_match(ours, ref, cfg.encoder_layers)
    assert (feats - ref.hidden_states[3]).abs().max().item() < TOL


def test_padded_batch_encoder_matches_transformers():
    """Key-padding masks: a padded row gives the transformers result on its valid frames."""
    cfg = hubert_base_config(encoder_layers=2)
    model = _random_model(cfg, seed=3)
    hf = to_transformers_model(model, attn_implementation="eager")
    torch.manual_seed(4)
    x = torch.randn(2, 90, cfg.encoder_embed_dim)
    padding = torch.zeros(2, 90, dtype=torch.bool)
    padding[1, 61:] = True
    with torch.no_grad():
        ours, _ = model.encoder(x, padding)
        ref = hf.encoder(x.clone(), attention_mask=~padding).last_hidden_state
        alone, _ = model.encoder(x[1:, :61])
    valid = ~padding
    assert (ours[valid] - ref[valid]).abs().max().item() < TOL
    # the padded row equals the same row run alone without padding
    assert (ours[1, :61] - alone[0]).abs().max().item() < TOL


def test_base_export_round_trip_matches_transformers(shared_data, tmp_path):
    """HuBERT Base (GroupNorm extractor, post-LN): export_to_transformers writes a directory
    that transformers loads and that reproduces every hidden state; it maps back exactly."""
    cfg = hubert_base_config(num_classes=[104, 54])
    model = _random_model(cfg, seed=1)
    out_dir = export_to_transformers(model, None, tmp_path / "hf")
    assert (out_dir / "config.json").is_file()
    loaded = transformers.HubertModel.from_pretrained(out_dir, attn_implementation="eager").eval()
    assert not loaded.config.do_stable_layer_norm and loaded.config.feat_extract_norm == "group"
    x = _waveform(shared_data, 190800 / 16000)  # the whole utterance
    with torch.no_grad():
        ours = model(x, mask=False, features_only=True)
        ref = loaded(x, output_hidden_states=True)
    assert ours["x"].shape == (1, 596, 768)  # fairseq's sample.base.L9.len
    _assert_hidden_states_match(ours, ref, cfg.encoder_layers)

    # the head travels in final_proj.pt
    state = model.state_dict()
    head = torch.load(out_dir / FINAL_PROJ_FILE, weights_only=True)
    assert set(head) == {"final_proj.weight", "final_proj.bias", "label_embs_concat"}
    assert head["final_proj.weight"].shape == (2 * 256, 768)
    assert head["label_embs_concat"].shape == (158, 256)
    assert all(torch.equal(head[k], state[k]) for k in head)
    # HF -> fairseq names gives back exactly our tensors, and the directory re-imports
    back = hf_to_fairseq_state_dict(loaded.state_dict())
    assert set(back) == set(state) - set(head)
    assert all(torch.equal(back[k], state[k]) for k in back)
    again = import_from_transformers(out_dir)
    assert again.cfg.num_classes == [104, 54] and again.cfg.layer_norm_first is False
    assert again.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in again.state_dict().items())


def test_reference_layer_features_shape(shared_data):
    """fairseq's reference outputs for this wav: 596 frames, the length our extractor gives."""
    ref = np.load(shared_data / "speech/hubert_reference/sample.base.L9.npy")
    assert ConvFeatureExtractor().output_lengths(190800) == ref.shape[0] == 596
