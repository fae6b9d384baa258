"""Convert HuBERT weights between fairseq/speechkit names and Hugging Face ``transformers``.

The name mapping is the one of ``transformers``' own fairseq converter
(huggingface/transformers ``src/transformers/models/hubert/
convert_hubert_original_pytorch_checkpoint_to_pytorch.py``, classic revision), written here as a
table of name templates. HF has no prediction head: ``final_proj`` and ``label_embs_concat``
travel in ``final_proj.pt`` next to the ``save_pretrained`` files. ``transformers`` is only a
development dependency and is imported lazily by the functions that need it.

Note: for pre-LN (Large) models HF's last ``hidden_states`` entry has the final encoder
LayerNorm applied; fairseq's ``output_layer=L`` output does not.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from speechkit.errors import CheckpointError
from speechkit.models.hubert import HubertConfig, HubertModel
from speechkit.modules.conv_feature_extractor import parse_conv_feature_layers

FINAL_PROJ_FILE = "final_proj.pt"

# (fairseq / speechkit name, HF HubertModel name); {i} = index, {p} = weight|bias.
NAME_PAIRS: list[tuple[str, str]] = [
    ("feature_extractor.conv_layers.{i}.0.{p}", "feature_extractor.conv_layers.{i}.conv.{p}"),
    (
        "feature_extractor.conv_layers.{i}.2.1.{p}",
        "feature_extractor.conv_layers.{i}.layer_norm.{p}",
    ),
    ("feature_extractor.conv_layers.{i}.2.{p}", "feature_extractor.conv_layers.{i}.layer_norm.{p}"),
    ("layer_norm.{p}", "feature_projection.layer_norm.{p}"),
    ("post_extract_proj.{p}", "feature_projection.projection.{p}"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"),
    (
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    ),
    (
        "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    ),
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}"),
    ("encoder.layers.{i}.self_attn.q_proj.{p}", "encoder.layers.{i}.attention.q_proj.{p}"),
    ("encoder.layers.{i}.self_attn.k_proj.{p}", "encoder.layers.{i}.attention.k_proj.{p}"),
    ("encoder.layers.{i}.self_attn.v_proj.{p}", "encoder.layers.{i}.attention.v_proj.{p}"),
    ("encoder.layers.{i}.self_attn.out_proj.{p}", "encoder.layers.{i}.attention.out_proj.{p}"),
    ("encoder.layers.{i}.self_attn_layer_norm.{p}", "encoder.layers.{i}.layer_norm.{p}"),
    ("encoder.layers.{i}.fc1.{p}", "encoder.layers.{i}.feed_forward.intermediate_dense.{p}"),
    ("encoder.layers.{i}.fc2.{p}", "encoder.layers.{i}.feed_forward.output_dense.{p}"),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.final_layer_norm.{p}"),
    ("mask_emb", "masked_spec_embed"),
]
HEAD_KEYS = ("final_proj.weight", "final_proj.bias", "label_embs_concat")
"""fairseq keys HF has no place for (saved in ``final_proj.pt``)."""
_LEGACY_WEIGHT_NORM = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}


def _pattern(template: str) -> re.Pattern:
    regex = (
        re.escape(template)
        .replace(r"\{i\}", r"(?P<i>\d+)")
        .replace(r"\{p\}", r"(?P<p>weight|bias)")
    )
    return re.compile(f"^{regex}$")


_F2H = [(_pattern(f), h) for f, h in NAME_PAIRS]
_H2F = [(_pattern(h), f) for f, h in NAME_PAIRS]


def _rename(name: str, table: list[tuple[re.Pattern, str]], skip: set[str]) -> str | None:
    for pattern, template in table:
        m = pattern.match(name)
        if m and template not in skip:
            return template.format(**m.groupdict())
    return None


def fairseq_to_hf_state_dict(
    state: dict[str, torch.Tensor], legacy_weight_norm: bool = False
) -> dict[str, torch.Tensor]:
    """fairseq/speechkit HuBERT state dict -> ``transformers.HubertModel`` names.

    ``final_proj`` / ``label_embs_concat`` are dropped. ``legacy_weight_norm`` writes the
    positional-conv weight norm as ``weight_g`` / ``weight_v`` instead of
    ``parametrizations.weight.original0/1`` (torch >= 2.1 runtime names).

    Raises:
        CheckpointError: a key with no HF counterpart (names it).
    """
    out = {}
    for name, value in state.items():
        if name in HEAD_KEYS:
            continue
        new = _rename(name, _F2H, set())
        if new is None:
            raise CheckpointError(f"HuBERT weight {name!r} has no transformers counterpart")
        if legacy_weight_norm:
            new = {v: k for k, v in _LEGACY_WEIGHT_NORM.items()}.get(new, new)
        out[new] = value
    if "post_extract_proj.weight" not in state and "layer_norm.weight" in state:
        dim = state["encoder.layer_norm.weight"].numel()  # HF always has the projection
        out["feature_projection.projection.weight"] = torch.eye(dim)
        out["feature_projection.projection.bias"] = torch.zeros(dim)
    return out


def hf_to_fairseq_state_dict(
    state: dict[str, torch.Tensor], extractor_mode: str | None = None
) -> dict[str, torch.Tensor]:
    """``transformers.HubertModel`` state dict -> fairseq/speechkit names (no head weights).

    ``extractor_mode`` (``default`` / ``layer_norm``) decides where conv-block norms go; None
    infers it (a norm in block 1 means ``layer_norm``). Accepts both weight-norm namings.

    Raises:
        CheckpointError: a key with no fairseq counterpart.
    """
    state = {_LEGACY_WEIGHT_NORM.get(k, k): v for k, v in state.items()}
    if extractor_mode is None:
        has_ln = "feature_extractor.conv_layers.1.layer_norm.weight" in state
        extractor_mode = "layer_norm" if has_ln else "default"
    group_norm, layer_norm = (
        "feature_extractor.conv_layers.{i}.2.{p}",
        "feature_extractor.conv_layers.{i}.2.1.{p}",
    )
    skip = {group_norm} if extractor_mode == "layer_norm" else {layer_norm}
    out = {}
    for name, value in state.items():
        new = _rename(name, _H2F, skip)
        if new is None:
            raise CheckpointError(f"transformers weight {name!r} has no fairseq HuBERT counterpart")
        out[new] = value
    return out


_ACT_TO_HF = {
    "gelu": "gelu",
    "gelu_accurate": "gelu_pytorch_tanh",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}


def hf_config_kwargs(cfg: HubertConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.HubertConfig`` describing the same encoder.

    The head (``final_dim``, ``num_classes``, ``logit_temp``, ``untie_final_proj``) is stored as
    extra ``speechkit_*`` attributes that HF keeps in ``config.json``.
    """
    spec = parse_conv_feature_layers(cfg.conv_feature_layers)
    return dict(
        hidden_size=cfg.encoder_embed_dim,
        num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads,
        intermediate_size=cfg.encoder_ffn_embed_dim,
        hidden_act=_ACT_TO_HF[cfg.activation_fn],
        hidden_dropout=cfg.dropout,
        activation_dropout=cfg.activation_dropout,
        attention_dropout=cfg.attention_dropout,
        feat_proj_dropout=cfg.dropout_input,
        feat_proj_layer_norm=True,
        layerdrop=cfg.encoder_layerdrop,
        layer_norm_eps=1e-5,
        feat_extract_norm="layer" if cfg.extractor_mode == "layer_norm" else "group",
        feat_extract_activation="gelu",
        conv_dim=[c for c, _, _ in spec],
        conv_kernel=[k for _, k, _ in spec],
        conv_stride=[s for _, _, s in spec],
        conv_bias=cfg.conv_bias,
        num_conv_pos_embeddings=cfg.conv_pos,
        num_conv_pos_embedding_groups=cfg.conv_pos_groups,
        do_stable_layer_norm=cfg.layer_norm_first,
        apply_spec_augment=cfg.mask_prob > 0 or cfg.mask_channel_prob > 0,
        mask_time_prob=cfg.mask_prob,
        mask_time_length=cfg.mask_length,
        mask_time_min_masks=cfg.mask_min_masks,
        mask_feature_prob=cfg.mask_channel_prob,
        mask_feature_length=cfg.mask_channel_length,
        classifier_proj_size=cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim,
        speechkit_final_dim=cfg.final_dim,
        speechkit_num_classes=list(cfg.num_classes),
        speechkit_logit_temp=cfg.logit_temp,
        speechkit_untie_final_proj=cfg.untie_final_proj,
        speechkit_label_rate=cfg.label_rate,
        architectures=["HubertModel"],
    )


def hubert_config_from_hf(hf_config: Any) -> HubertConfig:
    """``transformers.HubertConfig`` (or its dict) -> ``HubertConfig`` (encoder fields, plus the
    head fields when the config came from ``export_to_transformers``)."""
    get = (
        hf_config.get if isinstance(hf_config, dict) else lambda k, d=None: getattr(hf_config, k, d)
    )
    blocks = " + ".join(
        f"[({c},{k},{s})]"
        for c, k, s in zip(get("conv_dim"), get("conv_kernel"), get("conv_stride"))
    )
    act = {v: k for k, v in _ACT_TO_HF.items()}.get(get("hidden_act"), "gelu")
    values = dict(
        encoder_embed_dim=get("hidden_size"),
        encoder_layers=get("num_hidden_layers"),
        encoder_attention_heads=get("num_attention_heads"),
        encoder_ffn_embed_dim=get("intermediate_size"),
        activation_fn=act,
        dropout=get("hidden_dropout"),
        activation_dropout=get("activation_dropout"),
        attention_dropout=get("attention_dropout"),
        dropout_input=get("feat_proj_dropout"),
        encoder_layerdrop=get("layerdrop"),
        extractor_mode="layer_norm" if get("feat_extract_norm") == "layer" else "default",
        conv_feature_layers=blocks,
        conv_bias=bool(get("conv_bias")),
        conv_pos=get("num_conv_pos_embeddings"),
        conv_pos_groups=get("num_conv_pos_embedding_groups"),
        layer_norm_first=bool(get("do_stable_layer_norm")),
        mask_prob=get("mask_time_prob"),
        mask_length=get("mask_time_length"),
        mask_min_masks=get("mask_time_min_masks"),
        mask_channel_prob=get("mask_feature_prob"),
        mask_channel_length=get("mask_feature_length"),
        final_dim=get("speechkit_final_dim", get("classifier_proj_size")),
        num_classes=list(get("speechkit_num_classes", [])),
        logit_temp=get("speechkit_logit_temp", 0.1),
        untie_final_proj=get("speechkit_untie_final_proj", True),
        label_rate=get("speechkit_label_rate", 50.0),
    )
    return HubertConfig(**values)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "exporting to Hugging Face needs the 'transformers' package "
            "(pip install 'speechkit[dev]' or pip install transformers)"
        ) from e
    return transformers


def to_transformers_model(
    model: HubertModel, cfg: HubertConfig | None = None, attn_implementation: str | None = None
):
    """Build a ``transformers.HubertModel`` (eval mode, fp32, on the CPU) holding a copy of
    ``model``'s encoder weights. ``attn_implementation``: HF's ``"eager"`` / ``"sdpa"``.

    Raises:
        ImportError: transformers is not installed.
        CheckpointError: the weights do not fit (names the keys).
    """
    transformers = _transformers()
    cfg = cfg if cfg is not None else model.cfg
    kwargs = hf_config_kwargs(cfg)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):  # no random init: every weight is assigned below
        hf = transformers.HubertModel(transformers.HubertConfig(**kwargs))
    names = set(hf.state_dict())
    legacy = "encoder.pos_conv_embed.conv.weight_g" in names
    state = fairseq_to_hf_state_dict(model.state_dict(), legacy_weight_norm=legacy)
    state = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in state.items()}
    if "masked_spec_embed" not in names:
        state.pop("masked_spec_embed", None)
    missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit transformers.HubertModel: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    hf.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*hf.parameters(), *hf.buffers())):
        raise CheckpointError("transformers.HubertModel has tensors that no weight fills")
    return hf.eval()


def export_to_transformers(
    model: HubertModel, cfg: HubertConfig | None, out_dir: str | os.PathLike
) -> Path:
    """Write a ``save_pretrained`` directory loadable with ``transformers.HubertModel
    .from_pretrained(out_dir)`` (``config.json`` + weights), plus ``final_proj.pt`` holding
    ``final_proj.weight`` (final_dim * n_sets, C), ``final_proj.bias`` and ``label_embs_concat``
    (sum(num_classes), final_dim) when the model has them (loadable with weights_only=True).

    Raises:
        ImportError: transformers is not installed.
        CheckpointError: the weights do not fit the HF model.
    """
    out_dir = Path(out_dir)
    hf = to_transformers_model(model, cfg)
    hf.save_pretrained(out_dir)
    state = model.state_dict()
    head = {k: state[k].detach().cpu().clone() for k in HEAD_KEYS if k in state}
    if head:
        torch.save(head, out_dir / FINAL_PROJ_FILE)
    return out_dir


def import_from_transformers(src: str | os.PathLike | Any) -> HubertModel:
    """A ``HubertModel`` (eval mode) from a ``transformers.HubertModel`` or a ``save_pretrained``
    directory; ``final_proj.pt`` in that directory restores the prediction head.

    Raises:
        ImportError: transformers is not installed.
        CheckpointError: the weights do not fit.
    """
    head: dict[str, torch.Tensor] = {}
    if isinstance(src, str | os.PathLike):
        hf = _transformers().HubertModel.from_pretrained(str(src))
        head_file = Path(src) / FINAL_PROJ_FILE
        if head_file.is_file():
            head = torch.load(head_file, map_location="cpu", weights_only=True)
    else:
        hf = src
    cfg = hubert_config_from_hf(hf.config)
    if not head:
        cfg.num_classes = []
    model = HubertModel(cfg)
    state = hf_to_fairseq_state_dict(hf.state_dict(), cfg.extractor_mode)
    state.update(head)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in ("mask_emb", *HEAD_KEYS)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"transformers weights do not fit HuBERT: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()
