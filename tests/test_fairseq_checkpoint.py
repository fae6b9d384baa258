"""fairseq checkpoint I/O (layout, safe loading, legacy files) and HuBERT model numerics
(masking statistics against the exact hypergeometric coverage, logits against fairseq's
cosine-similarity formulation, label alignment, gradient scaling)."""

from __future__ import annotations

import argparse
import math
import pickle
import pickletools
import sys
import types
import zipfile

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from speechkit.errors import CheckpointError, ConfigError
from speechkit.interop.fairseq import (
    FAIRSEQ_HUBERT_FIELDS,
    FairseqDictionary,
    contentvec_from_fairseq_checkpoint,
    hubert_config_from_fairseq,
    hubert_from_fairseq_checkpoint,
    load_fairseq_checkpoint,
    save_fairseq_checkpoint,
)
from speechkit.models.contentvec import ContentVecConfig, ContentVecModel
from speechkit.models.hubert import (
    HubertConfig,
    HubertModel,
    compute_mask_indices,
    hubert_base_config,
    hubert_large_config,
)

TINY = dict(
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    encoder_layers=2,
    encoder_embed_dim=64,
    encoder_ffn_embed_dim=128,
    encoder_attention_heads=4,
    conv_pos=16,
    conv_pos_groups=4,
    final_dim=16,
)


def _reference_keys(n_layers: int, layer_norm_extractor: bool) -> dict[str, tuple]:
    """HuBERT Base key list and shapes as documented in research/hubert_contentvec.md 1.6."""
    keys = {"mask_emb": (768,), "label_embs_concat": (504, 256)}
    for i in range(7):
        c_in, k = (1, 10) if i == 0 else (512, 3 if i <= 4 else 2)
        keys[f"feature_extractor.conv_layers.{i}.0.weight"] = (512, c_in, k)
        if layer_norm_extractor:
            keys[f"feature_extractor.conv_layers.{i}.2.1.weight"] = (512,)
            keys[f"feature_extractor.conv_layers.{i}.2.1.bias"] = (512,)
    if not layer_norm_extractor:
        keys["feature_extractor.conv_layers.0.2.weight"] = (512,)
        keys["feature_extractor.conv_layers.0.2.bias"] = (512,)
    keys.update({"layer_norm.weight": (512,), "layer_norm.bias": (512,)})
    keys.update({"post_extract_proj.weight": (768, 512), "post_extract_proj.bias": (768,)})
    keys.update(
        {
            "encoder.pos_conv.0.bias": (768,),
            "encoder.pos_conv.0.weight_g": (1, 1, 128),
            "encoder.pos_conv.0.weight_v": (768, 48, 128),
            "encoder.layer_norm.weight": (768,),
            "encoder.layer_norm.bias": (768,),
        }
    )
    for n in range(n_layers):
        p = f"encoder.layers.{n}."
        for proj in ("k", "v", "q", "out"):
            keys[f"{p}self_attn.{proj}_proj.weight"] = (768, 768)
            keys[f"{p}self_attn.{proj}_proj.bias"] = (768,)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            keys[f"{p}{ln}.weight"] = (768,)
            keys[f"{p}{ln}.bias"] = (768,)
        keys.update({f"{p}fc1.weight": (3072, 768), f"{p}fc1.bias": (3072,)})
        keys.update({f"{p}fc2.weight": (768, 3072), f"{p}fc2.bias": (768,)})
    keys.update({"final_proj.weight": (256, 768), "final_proj.bias": (256,)})
    return keys


def _pickled_globals(path) -> set[str]:
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# ---------------------------------------------------------------------------------------------
# checkpoint layout and round trip
def test_base_checkpoint_round_trip_has_fairseq_layout(tmp_path):
    torch.manual_seed(0)
    cfg = hubert_base_config()
    model = HubertModel(cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == _reference_keys(12, False)
    path = save_fairseq_checkpoint(model, None, tmp_path / "checkpoint_best.pt", num_updates=7)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away

    # fairseq's own layout: the dictionary is pickled as fairseq's class (fairseq loads it),
    # so torch's weights-only loader refuses the file exactly as it does fairseq's files
    assert "fairseq.data.dictionary Dictionary" in _pickled_globals(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    ckpt = load_fairseq_checkpoint(path)
    assert set(ckpt) == {
        "args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state"
    }  # fmt: skip
    assert ckpt["args"] is None and ckpt["criterion"] is None
    assert ckpt["optimizer_history"][-1]["num_updates"] == 7
    assert ckpt["optimizer_history"][-1]["criterion_name"] == "HubertCriterion"
    for group in ("common", "dataset", "optimization", "checkpoint", "task", "criterion"):
        assert group in ckpt["cfg"]
    assert ckpt["cfg"]["model"]["_name"] == "hubert"
    assert set(ckpt["cfg"]["model"]) == {"_name", *FAIRSEQ_HUBERT_FIELDS}
    assert ckpt["cfg"]["task"]["_name"] == "hubert_pretraining"
    (dictionary,) = ckpt["task_state"]["dictionaries"]
    assert isinstance(dictionary, FairseqDictionary) and len(dictionary) == 504
    assert dictionary.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert dictionary.symbols[4:] == [str(k) for k in range(500)]
    assert dictionary.indices["17"] == 21

    state = model.state_dict()
    assert list(ckpt["model"]) == list(state)
    for k, v in state.items():
        assert ckpt["model"][k].dtype == v.dtype and torch.equal(ckpt["model"][k], v), k
    assert hubert_config_from_fairseq(ckpt) == cfg
    loaded, loaded_cfg, dicts = hubert_from_fairseq_checkpoint(ckpt)
    assert loaded_cfg == cfg and dicts == [dictionary] and not loaded.training
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_large_layout_keys():
    """Large's layer-norm extractor puts a norm in every conv block (keys ``.2.1.``); the rest
    follows the same pattern (checked here at Base width, 2 layers)."""
    cfg = hubert_large_config(
        encoder_layers=2, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
        encoder_attention_heads=12, final_dim=256,
    )  # fmt: skip
    assert cfg.layer_norm_first and cfg.extractor_mode == "layer_norm"
    got = {k: tuple(v.shape) for k, v in HubertModel(cfg).state_dict().items()}
    assert got == _reference_keys(2, True)


def test_dictionary_size_mismatch_is_refused(tmp_path):
    model = HubertModel(HubertConfig(**TINY, num_classes=[14]))
    with pytest.raises(CheckpointError, match="num_classes"):
        save_fairseq_checkpoint(model, None, tmp_path / "x.pt", [FairseqDictionary.for_kmeans(5)])
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------------------------------
# safety
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    ckpt = {"model": {"w": torch.zeros(2)}, "cfg": {"model": _Payload(marker)}}
    if how == "torch_zip":
        torch.save(ckpt, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({**ckpt, "model": {"w": [0.0, 0.0]}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing") as err:
        load_fairseq_checkpoint(path)
    assert "system" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()
    if how == "torch_zip":  # the payload is live: an unrestricted load runs it
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_fairseq_checkpoint(tmp_path / "nope.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        load_fairseq_checkpoint(tmp_path / "list.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_fairseq_checkpoint(tmp_path / "trunc.pt")


# ---------------------------------------------------------------------------------------------
# legacy files
def _fairseq_standin(monkeypatch) -> type:
    """Install a stand-in ``fairseq.data.dictionary`` module so that a test can pickle an
    object under fairseq's class name; removed again before loading."""

    class Dictionary:  # attributes as fairseq's Dictionary (v0.12.2)
        def __init__(self, n_clusters):
            self.bos_word, self.unk_word, self.pad_word, self.eos_word = (
                "<s>", "<unk>", "<pad>", "</s>"
            )  # fmt: skip
            self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(k) for k in range(n_clusters)]
            self.count = [1] * len(self.symbols)
            self.indices = {s: i for i, s in enumerate(self.symbols)}
            self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
            self.nspecial = 4

    Dictionary.__module__, Dictionary.__qualname__ = "fairseq.data.dictionary", "Dictionary"
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["fairseq.data.dictionary"].Dictionary = Dictionary
    return Dictionary


def test_legacy_args_checkpoint_is_read_and_mapped(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source_cfg = HubertConfig(**TINY, label_rate=100.0, dropout=0.0, num_classes=[104])
    model = HubertModel(source_cfg)
    args = argparse.Namespace(
        arch="hubert", task="hubert_pretraining", criterion="hubert", sample_rate=16000,
        labels=["km"], fp16=True, layer_type="transformer", **TINY, label_rate=100,
        dropout=0.0, encoder_layerdrop=0.05, mask_prob=0.8, extractor_mode="default",
        untie_final_proj=True,
    )  # fmt: skip
    path = tmp_path / "legacy.pt"
    with monkeypatch.context() as mp:
        dictionary_cls = _fairseq_standin(mp)
        torch.save(
            {
                "args": args,
                "model": model.state_dict(),
                "optimizer_history": [{"criterion_name": "HubertCriterion", "num_updates": 3}],
                "task_state": {"dictionaries": [dictionary_cls(100)]},
                "extra_state": {"train_iterator": {"epoch": 2}},
            },
            path,
        )
    assert "fairseq" not in sys.modules  # the loader must not need fairseq
    ckpt = load_fairseq_checkpoint(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].encoder_layers == 2
    (dictionary,) = ckpt["task_state"]["dictionaries"]
    assert isinstance(dictionary, FairseqDictionary) and len(dictionary) == 104
    assert dictionary.pad_index == 1 and dictionary.symbols[-1] == "99"

    cfg = hubert_config_from_fairseq(ckpt["args"], num_classes=[len(dictionary)])
    assert cfg == source_cfg
    cfg2 = hubert_config_from_fairseq(ckpt)  # num_classes from the dictionaries
    assert cfg2.num_classes == [104] and cfg2.label_rate == 100.0
    loaded, _, _ = hubert_from_fairseq_checkpoint(path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_pickled_omegaconf_cfg_becomes_plain_dict(tmp_path):
    cfg = OmegaConf.create(
        {
            "model": {"_name": "hubert", "encoder_layers": 3, "label_rate": "${task.label_rate}",
                      "mask_prob": 0.65, "conv_feature_layers": TINY["conv_feature_layers"]},
            "task": {"_name": "hubert_pretraining", "label_rate": 100, "labels": ["km", "mfcc"]},
        }
    )  # fmt: skip
    torch.save({"args": None, "cfg": cfg, "model": {}}, tmp_path / "oc.pt")
    ckpt = load_fairseq_checkpoint(tmp_path / "oc.pt")
    assert type(ckpt["cfg"]) is dict and type(ckpt["cfg"]["task"]["labels"]) is list
    assert ckpt["cfg"] == OmegaConf.to_container(cfg)
    mapped = hubert_config_from_fairseq(ckpt["cfg"])  # full cfg: model group + task fallback
    assert (mapped.encoder_layers, mapped.label_rate, mapped.mask_prob) == (3, 100.0, 0.65)


def test_unsupported_fairseq_configs_are_refused():
    with pytest.raises(CheckpointError, match="conformer"):
        hubert_config_from_fairseq({"_name": "hubert", "layer_type": "conformer"})
    state = HubertModel(HubertConfig(**TINY)).state_dict()
    state["layer_proj.weight"] = torch.zeros(16, 64)  # ContentVec full
    ckpt = {"args": None, "cfg": {"model": dict(TINY), "task": {}}, "model": state}
    with pytest.raises(CheckpointError, match="ContentVec"):
        hubert_from_fairseq_checkpoint(ckpt)
    # fairseq eval()s conv_feature_layers from the checkpoint; speechkit parses it
    evil = hubert_config_from_fairseq({"conv_feature_layers": "__import__('os').getpid()"})
    with pytest.raises(ConfigError, match="conv_feature_layers"):
        HubertModel(evil)


# ---------------------------------------------------------------------------------------------
# masking
def _coverage_probability(T: int, length: int, k: int, n: int) -> torch.Tensor:
    """P(frame t is masked) when k distinct starts are drawn uniformly from range(n) and each
    masks [start, start + length): 1 - C(n - w_t, k) / C(n, k), w_t = starts covering t."""
    p = []
    for t in range(T):
        w = max(0, min(t, n - 1) - max(0, t - length + 1) + 1)
        p.append(1.0 - math.comb(n - w, k) / math.comb(n, k))
    return torch.tensor(p, dtype=torch.float64)


def test_mask_statistics_match_exact_coverage():
    B, T, L = 4000, 205, 10
    mask = compute_mask_indices(
        (B, T), None, 0.8, L, min_masks=2, require_same_masks=False,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    # 0.8 * 205 / 10 = 16.4: 16 spans with probability 0.6, 17 with 0.4; starts in [0, 195)
    expected = 0.6 * _coverage_probability(T, L, 16, 195) + 0.4 * _coverage_probability(
        T, L, 17, 195
    )
    observed = mask.double().mean(0)
    assert abs(observed.mean() - expected.mean()) < 0.004
    assert (observed - expected).abs().max() < 0.04  # ~4.5 sigma per position
    assert not mask[:, 204].any()  # the last start is 194, its span ends at frame 203
    # spans of 10 merge: every run of masked frames is at least 10 long
    edges = torch.diff(F.pad(mask.long(), (1, 1)), dim=1)
    starts, ends = (edges == 1).nonzero()[:, 1], (edges == -1).nonzero()[:, 1]
    assert (ends - starts).min() >= L


def test_mask_reproducible_padding_same_counts_and_min_masks():
    padding = torch.zeros(3, 120, dtype=torch.bool)
    padding[1, 90:] = True
    padding[2, 40:] = True

    def draw(seed):
        return compute_mask_indices(
            (3, 120), padding, 0.8, 10, 2, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = draw(5), draw(5), draw(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not (a & padding).any()
    counts = a.sum(1)
    assert (counts == counts[0]).all() and 10 <= counts[0] <= 40  # row 2: 3 spans in 40 frames
    few = compute_mask_indices(
        (500, 50), None, 0.01, 10, 2, False, generator=torch.Generator().manual_seed(0)
    )
    assert few.sum(1).min() >= 10 and few.sum(1).max() <= 20  # min_masks=2 spans
    assert (few.sum(1) < 20).any()  # overlapping spans are allowed


# ---------------------------------------------------------------------------------------------
# logits, label alignment, gradient scaling
def test_logits_match_fairseq_cosine_formulation():
    torch.manual_seed(2)
    cfg = HubertConfig(**TINY, num_classes=[14, 9], label_rate=100.0, dropout=0.0,
                       attention_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0)  # fmt: skip
    model = HubertModel(cfg).eval()
    source = torch.randn(2, 8000)
    frames = model.feature_extractor.output_lengths(8000)  # 24 frames at 50 Hz
    labels = [torch.randint(4, 14, (2, 2 * frames + 1)), torch.randint(4, 9, (2, 2 * frames + 1))]
    gen = torch.Generator().manual_seed(3)
    out = model(source, target_list=labels, generator=gen)
    again = model(source, target_list=labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out["mask_indices"], again["mask_indices"])
    assert torch.equal(out["logit_m_list"][0], again["logit_m_list"][0])

    feats = model(source, features_only=True, mask_indices=out["mask_indices"])["x"]
    masked = out["mask_indices"]
    assert out["logit_m_list"][0].shape == (int(masked.sum()), 1 + 14)
    assert out["logit_u_list"][1].shape == (int((~masked).sum()), 1 + 9)
    embs = model.label_embs_concat.double().split([14, 9])
    proj = model.final_proj(feats).double().chunk(2, dim=-1)
    for i in range(2):
        for sel, logits, targets in (
            (masked, out["logit_m_list"][i], out["target_m_list"][i]),
            (~masked, out["logit_u_list"][i], out["target_u_list"][i]),
        ):
            # label of frame t at 100 Hz is labels[2t]
            assert torch.equal(targets, labels[i][:, ::2][:, :frames][sel])
            x = proj[i][sel]  # (N, D)
            positives = embs[i][targets].unsqueeze(0)  # fairseq: [pos; all rows] (1 + K, N, D)
            candidates = torch.cat([positives, embs[i].unsqueeze(1).expand(-1, len(x), -1)])
            ref = torch.cosine_similarity(x.unsqueeze(0), candidates, dim=-1).t() / 0.1
            ref[torch.arange(len(x)), 1 + targets] = float("-inf")
            assert torch.allclose(logits.double(), ref, atol=1e-4, rtol=0)
    loss = F.cross_entropy(out["logit_m_list"][0], model.get_targets(out)[0], reduction="sum")
    assert torch.isfinite(loss)
    assert model.get_extra_losses(out)[1] == ["features_pen"]


@pytest.mark.parametrize("mult", [0.1, 0.0])
def test_feature_grad_mult_scales_extractor_gradient(mult):
    grads = {}
    for m in (1.0, mult):
        torch.manual_seed(4)
        cfg = HubertConfig(**TINY, feature_grad_mult=m, dropout=0.0, attention_dropout=0.0,
                           dropout_input=0.0, encoder_layerdrop=0.0, num_classes=[])  # fmt: skip
        model = HubertModel(cfg)
        out = model(torch.randn(1, 6000, generator=torch.Generator().manual_seed(0)),
                    mask=False, features_only=True)  # fmt: skip
        out["x"].square().sum().backward()
        grads[m] = model.feature_extractor.conv_layers[0][0].weight.grad
    if mult == 0.0:
        assert grads[0.0] is None
    else:
        assert torch.allclose(grads[mult], mult * grads[1.0], rtol=1e-4, atol=1e-10)


def test_full_contentvec_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = ContentVecConfig(
        conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2",
        encoder_layers=3,
        encoder_layers_1=2,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=4,
        final_dim=16,
        conv_pos=16,
        conv_pos_groups=4,
        num_classes=[12],
        spk_dim=6,
        ctr_layers=[-2],
        logit_temp_ctr=0.5,
        num_negatives=7,
    )
    model = ContentVecModel(cfg).eval()
    path = save_fairseq_checkpoint(model, None, tmp_path / "contentvec.pt")
    ckpt = load_fairseq_checkpoint(path)
    assert ckpt["cfg"]["model"]["_name"] == "contentvec"
    # ContentVec's own registered names, not HuBERT's
    assert ckpt["cfg"]["task"]["_name"] == "contentvec_pretraining"
    assert ckpt["cfg"]["criterion"]["_name"] == "contentvec"
    assert ckpt["optimizer_history"][-1]["criterion_name"] == "ContentvecCriterion"
    assert ckpt["model"]["encoder.layers.4.self_attn_layer_norm.weight_ln.weight"].shape == (32, 6)

    loaded, cfg2, dicts = contentvec_from_fairseq_checkpoint(path)
    assert (cfg2.encoder_layers, cfg2.encoder_layers_1, cfg2.spk_dim) == (3, 2, 6)
    assert (cfg2.ctr_layers, cfg2.logit_temp_ctr, cfg2.num_negatives) == ([-2], 0.5, 7)
    assert not cfg2.cond_layer_norm_joint and len(dicts) == 1
    wav, spk = torch.randn(2, 8000), torch.randn(2, 6)
    with torch.no_grad():
        a, _ = model.extract_features(wav, spk_emb=spk)
        b, _ = loaded.extract_features(wav, spk_emb=spk)
    assert torch.equal(a, b)
    joint, cfg3, _ = contentvec_from_fairseq_checkpoint(path, cond_layer_norm_joint=True)
    assert cfg3.cond_layer_norm_joint
    assert all(n.joint for n in joint.conditional_norms())
    with pytest.raises(CheckpointError, match="load it with the contentvec model"):
        hubert_from_fairseq_checkpoint(path)

    # a HuBERT checkpoint is not a full ContentVec one
    fields = ("conv_feature_layers", "encoder_layers", "encoder_embed_dim", "num_classes")
    fields += ("encoder_ffn_embed_dim", "encoder_attention_heads", "final_dim", "conv_pos")
    hubert = HubertModel(HubertConfig(**{k: getattr(cfg, k) for k in (*fields, "conv_pos_groups")}))
    hpath = save_fairseq_checkpoint(hubert, None, tmp_path / "hubert.pt")
    with pytest.raises(CheckpointError, match="no speaker-conditioned layers"):
        contentvec_from_fairseq_checkpoint(hpath)


# ---------------------------------------------------------------------------------------------
# fairseq's general config groups (what fairseq itself reads from a loaded checkpoint)
FAIRSEQ_CONFIG_GROUPS = [
    "common", "common_eval", "distributed_training", "dataset", "optimization", "checkpoint",
    "bmuf", "generation", "eval_lm", "interactive", "model", "task", "criterion", "optimizer",
    "lr_scheduler", "scoring", "bpe", "tokenizer", "ema",
]  # fmt: skip
"""The fields of fairseq 0.12's ``FairseqConfig``, in order (fairseq/dataclass/configs.py)."""


def test_stored_fairseq_defaults_cover_fairseq_config():
    """The stored defaults (generated from fairseq 0.12 by tests/make_fairseq_defaults.py)
    hold every general group with its fields, among them the keys fairseq's loader reads."""
    from speechkit.interop.fairseq_defaults import FAIRSEQ_DEFAULT_GROUPS, FAIRSEQ_VERSION

    assert FAIRSEQ_VERSION.startswith("0.12")
    expected = [g for g in FAIRSEQ_CONFIG_GROUPS if g not in ("model", "task", "criterion")]
    assert list(FAIRSEQ_DEFAULT_GROUPS) == expected
    for group in ("optimizer", "lr_scheduler", "scoring", "bpe", "tokenizer"):
        assert FAIRSEQ_DEFAULT_GROUPS[group] is None
    dict_groups = {g: v for g, v in FAIRSEQ_DEFAULT_GROUPS.items() if v is not None}
    for group, values in dict_groups.items():
        assert "_name" in values and len(values) > 1, group
    # keys fairseq 0.12 reads when it loads or upgrades a checkpoint, and a few known defaults
    generation, common = dict_groups["generation"], dict_groups["common"]
    assert generation["print_alignment"] is None and generation["beam"] == 5
    assert common["user_dir"] is None and common["seed"] == 1 and common["fp16"] is False
    assert dict_groups["checkpoint"]["save_dir"] == "checkpoints"
    assert dict_groups["distributed_training"]["distributed_world_size"] >= 1
    assert dict_groups["ema"]["store_ema"] is False
    assert sum(len(v) for v in dict_groups.values()) > 200  # every field, not stubs


@pytest.mark.parametrize("kind", ["hubert", "contentvec"])
def test_written_config_has_every_fairseq_group_and_key(tmp_path, kind):
    """``save_fairseq_checkpoint`` writes every group of FairseqConfig in its order, each general
    group with every stored key and value (fairseq 0.12 refused the former empty stubs with
    ``Missing key print_alignment``)."""
    from speechkit.interop.fairseq_defaults import FAIRSEQ_DEFAULT_GROUPS

    if kind == "hubert":
        model = HubertModel(HubertConfig(**TINY, num_classes=[9]))
    else:
        model = ContentVecModel(ContentVecConfig(**TINY, num_classes=[9], encoder_layers_1=1))
    path = save_fairseq_checkpoint(model, None, tmp_path / "ckpt.pt")
    cfg = load_fairseq_checkpoint(path)["cfg"]
    assert list(cfg) == ["_name", *FAIRSEQ_CONFIG_GROUPS]
    for group, values in FAIRSEQ_DEFAULT_GROUPS.items():
        assert cfg[group] == values, group
    assert cfg["generation"]["print_alignment"] is None
    assert cfg["model"]["_name"] == kind
    # fairseq's HuBERT declares label_rate a float, the ContentVec reference an int (its schema
    # refuses 50.0: "Value '50.0' of type 'float' could not be converted to Integer")
    rate_type = float if kind == "hubert" else int
    assert type(cfg["model"]["label_rate"]) is rate_type
    assert type(cfg["task"]["label_rate"]) is rate_type and cfg["task"]["label_rate"] == 50
    # fairseq reads the file through OmegaConf: every value must survive it unchanged
    assert OmegaConf.to_container(OmegaConf.create(cfg)) == cfg
    # the stored defaults are copied: a caller changing its config leaves them alone
    from speechkit.interop.fairseq import _fairseq_cfg

    fresh = _fairseq_cfg(model.cfg, None, 1)
    fresh["generation"]["beam"] = 99
    fresh["common"]["seed"] = 99
    assert FAIRSEQ_DEFAULT_GROUPS["generation"]["beam"] == 5
    assert FAIRSEQ_DEFAULT_GROUPS["common"]["seed"] == 1
