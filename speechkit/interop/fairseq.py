"""Read and write fairseq HuBERT / ContentVec checkpoints without fairseq.

Layout (facebookresearch/fairseq ``fairseq/trainer.py::state_dict`` and
``fairseq/checkpoint_utils.py``): a dict with ``args`` (argparse.Namespace in pre-2021 files, else
None), ``cfg`` (plain dict of config groups; pickled omegaconf containers in some older files),
``model`` (state dict), ``criterion``, ``optimizer_history``, ``task_state``
(``{"dictionaries": [Dictionary, ...]}``, pickled ``fairseq.data.dictionary.Dictionary``
instances), ``extra_state`` and optionally ``last_optimizer_state``.

Reading never executes pickled code: ``torch.load(weights_only=True)`` first, and if the file
holds fairseq objects, a restricted unpickler that admits an explicit allow-list of globals
(torch's tensor rebuild helpers, dtypes, ``collections.OrderedDict``, ``argparse.Namespace``,
numpy scalars / arrays) and maps fairseq's ``Dictionary`` and omegaconf's containers to plain
speechkit data holders. Anything else raises ``CheckpointError``.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import copy
import dataclasses
import io
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from speechkit.atomic import atomic_open
from speechkit.errors import CheckpointError
from speechkit.interop.fairseq_defaults import FAIRSEQ_DEFAULT_GROUPS
from speechkit.models.contentvec import ContentVecConfig, ContentVecModel
from speechkit.models.hubert import HubertConfig, HubertModel

FAIRSEQ_DICTIONARY = ("fairseq.data.dictionary", "Dictionary")


class FairseqDictionary:
    """Plain stand-in for ``fairseq.data.dictionary.Dictionary`` (data only, no methods that
    read files). Attributes as fairseq: ``symbols``, ``count``, ``indices``, ``bos_index`` ...

    Pickled (``torch.save`` through ``save_fairseq_checkpoint``) under fairseq's class name, so
    fairseq loads it as its own ``Dictionary``.
    """

    def __init__(self, symbols: list[str] | None = None):
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols: list[str] = []
        self.count: list[int] = []
        self.indices: dict[str, int] = {}
        self.bos_index = self.add_symbol(self.bos_word)
        self.pad_index = self.add_symbol(self.pad_word)
        self.eos_index = self.add_symbol(self.eos_word)
        self.unk_index = self.add_symbol(self.unk_word)
        self.nspecial = len(self.symbols)
        for s in symbols or []:
            self.add_symbol(s)

    @classmethod
    def for_kmeans(cls, n_clusters: int) -> FairseqDictionary:
        """fairseq's "dummy dictionary" ``dict.km.txt`` (lines ``"<k> 1"``): cluster k -> k + 4."""
        return cls([str(k) for k in range(n_clusters)])

    def add_symbol(self, word: str, n: int = 1) -> int:
        """Add ``word`` (or add ``n`` to its count); returns its index."""
        if word in self.indices:
            self.count[self.indices[word]] += n
            return self.indices[word]
        self.indices[word] = len(self.symbols)
        self.symbols.append(word)
        self.count.append(n)
        return self.indices[word]

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FairseqDictionary) and self.symbols == other.symbols

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("fairseq Dictionary state is not a dict")
        self.__dict__.update(state)


class _OmegaConfStub:
    """Holder for a pickled omegaconf object's state; ``_plain`` turns it into plain data."""

    kind = "node"

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DictConfigStub(_OmegaConfStub):
    kind = "dict"


class _ListConfigStub(_OmegaConfStub):
    kind = "list"


class _MetadataStub(_OmegaConfStub):
    kind = "meta"


_OMEGACONF = {
    ("omegaconf.dictconfig", "DictConfig"): _DictConfigStub,
    ("omegaconf.listconfig", "ListConfig"): _ListConfigStub,
    ("omegaconf.base", "Metadata"): _MetadataStub,
    ("omegaconf.base", "ContainerMetadata"): _MetadataStub,
    **{
        ("omegaconf.nodes", n): _OmegaConfStub
        for n in (
            "AnyNode",
            "StringNode",
            "IntegerNode",
            "FloatNode",
            "BooleanNode",
            "EnumNode",
            "BytesNode",
            "PathNode",
            "ValueNode",
        )
    },
}

_TORCH_REBUILD = {
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_meta_tensor_no_storage",
}
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
    ("builtins", "object"): object,
    ("typing", "Any"): Any,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    FAIRSEQ_DICTIONARY: FairseqDictionary,
    **_OMEGACONF,
}


_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")


def _numpy_global(module: str, name: str) -> Any:
    """numpy scalars, dtypes and plain arrays (metrics in ``extra_state``); None otherwise."""
    import numpy as np

    if module in _NUMPY_MULTIARRAY and name == "scalar":
        multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
        return multiarray.scalar
    if module in _NUMPY_MULTIARRAY and name == "_reconstruct":
        return _np_reconstruct
    if module == "numpy" and name in ("dtype", "ndarray"):
        return getattr(np, name)
    return None


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    import numpy as np

    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (see module docstring).

    Raises:
        pickle.UnpicklingError: on any other global (the refused name is in the message).
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch._utils" and name in _TORCH_REBUILD:
            return getattr(torch._utils, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("numpy"):
            obj = _numpy_global(module, name)
            if obj is not None:
                return obj
        raise pickle.UnpicklingError(f"refused global {module}.{name} (not on the allow-list)")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


restricted_pickle = types.ModuleType("speechkit_restricted_pickle")
"""Module-like object for ``torch.load(pickle_module=...)`` using ``RestrictedUnpickler``."""
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.loads = _restricted_loads
restricted_pickle.UnpicklingError = pickle.UnpicklingError
restricted_pickle.__version__ = "1"


def _plain(obj: Any) -> Any:
    """Replace omegaconf stubs by plain dicts / lists / values, recursively."""
    if isinstance(obj, _OmegaConfStub):
        state = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
        if obj.kind == "meta":
            return None
        key = "_content" if obj.kind in ("dict", "list") else "_val"
        return _plain(state.get(key))
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**{k: _plain(v) for k, v in vars(obj).items()})
    return obj


def _clone_tensors(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        out = obj.copy()  # same mapping type (dict, OrderedDict, defaultdict)
        for k, v in out.items():
            out[k] = _clone_tensors(v)
        return out
    if isinstance(obj, list):
        return [_clone_tensors(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return type(obj)(_clone_tensors(v) for v in obj)
    return obj


def load_fairseq_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a fairseq checkpoint (HuBERT, ContentVec legacy or full) safely.

    Returns the checkpoint dict with fairseq ``Dictionary`` objects as ``FairseqDictionary`` and
    pickled omegaconf containers as plain dicts / lists; ``args`` stays an
    ``argparse.Namespace``.

    Raises:
        CheckpointError: missing or unreadable file, not a dict with a ``model`` entry, or a
            pickle that references anything outside the allow-list (refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"fairseq checkpoint not found: {path}")
    try:
        try:  # memory-mapped, so that a refused first attempt does not read the tensors
            obj = torch.load(
                path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path)
            )
            if isinstance(obj, dict):  # own the memory: the file may be overwritten later
                obj = _clone_tensors(obj)
        except pickle.UnpicklingError:
            obj = torch.load(
                path, map_location=map_location, weights_only=False, pickle_module=restricted_pickle
            )
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"refusing to load {path}: it pickles objects outside the fairseq checkpoint "
            f"allow-list, which could execute code ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"cannot read fairseq checkpoint {path}: {e}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(
            f"{path} is not a fairseq checkpoint: expected a dict with a 'model' state dict, "
            f"got {type(obj).__name__}"
            + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else "")
        )
    return _plain(obj)


# ----------------------------------------------------------------------------------------------
# config mapping
_MODEL_FIELDS = [f.name for f in dataclasses.fields(HubertConfig) if not f.name.startswith("_")]
FAIRSEQ_HUBERT_FIELDS = [
    "label_rate",
    "extractor_mode",
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_attention_heads",
    "activation_fn",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "encoder_layerdrop",
    "dropout_input",
    "dropout_features",
    "final_dim",
    "untie_final_proj",
    "layer_norm_first",
    "conv_feature_layers",
    "conv_bias",
    "logit_temp",
    "target_glu",
    "feature_grad_mult",
    "mask_length",
    "mask_prob",
    "mask_selection",
    "mask_other",
    "no_mask_overlap",
    "mask_min_space",
    "mask_channel_length",
    "mask_channel_prob",
    "mask_channel_selection",
    "mask_channel_other",
    "no_mask_channel_overlap",
    "mask_channel_min_space",
    "conv_pos",
    "conv_pos_groups",
    "skip_masked",
    "skip_nomask",
]
"""Fields of fairseq's HubertConfig (June 2021 onward) that speechkit writes into ``cfg.model``."""


def _get(src: Any, key: str, default: Any = None) -> Any:
    if isinstance(src, dict):
        return src.get(key, default)
    return getattr(src, key, default)


def _unset(value: Any) -> bool:
    """None, omegaconf's MISSING (``???``) or an unresolved interpolation (``${task.x}``)."""
    return value is None or (isinstance(value, str) and (value == "???" or value.startswith("${")))


def hubert_config_from_fairseq(
    cfg_or_args: Any, num_classes: list[int] | None = None
) -> HubertConfig:
    """Map a fairseq config to ``HubertConfig``.

    Args:
        cfg_or_args: a legacy ``argparse.Namespace`` (``ckpt["args"]``), a full ``cfg`` dict
            (its ``model`` and ``task`` groups are used), a ``cfg["model"]`` dict, or a whole
            checkpoint dict (``args`` if set, else ``cfg``).
        num_classes: label-dictionary sizes; default: the lengths of
            ``task_state["dictionaries"]`` when a checkpoint is given, else the model's default.

    Raises:
        CheckpointError: no config found, or a field value of the wrong type.
    """
    src, task = cfg_or_args, None
    if isinstance(src, dict) and ("cfg" in src or "args" in src) and "model" in src:
        if num_classes is None:
            dicts = (src.get("task_state") or {}).get("dictionaries") or []
            if dicts:
                num_classes = [len(d) for d in dicts]
            elif "label_embs_concat" in src["model"]:
                num_classes = [int(src["model"]["label_embs_concat"].shape[0])]
        src = src.get("args") if src.get("args") is not None else src.get("cfg")
    if isinstance(src, dict) and isinstance(src.get("model"), dict):
        task, src = src.get("task"), src["model"]
    if src is None:
        raise CheckpointError("the checkpoint has neither 'args' nor 'cfg': no model config")
    layer_type = _get(src, "layer_type", None)
    if layer_type not in (None, "transformer"):
        raise CheckpointError(
            f"fairseq model layer_type={layer_type!r}: only 'transformer' is supported"
        )
    defaults = HubertConfig()
    values: dict[str, Any] = {}
    for name in _MODEL_FIELDS:
        value = _get(src, name, None)
        if _unset(value) and task is not None:
            value = _get(task, name, None)
        if _unset(value):
            continue
        default = getattr(defaults, name)
        try:
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int | float) and not isinstance(default, bool):
                value = type(default)(value)
            elif isinstance(default, str):
                value = str(value)
            elif isinstance(default, list):
                value = [int(v) for v in value]
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"fairseq model config field {name}={value!r}: {e}") from None
        values[name] = value
    if num_classes is not None:
        values["num_classes"] = list(num_classes)
    return HubertConfig(**values)


CONTENTVEC_FIELDS = ["encoder_layers_1", "ctr_layers", "logit_temp_ctr", "num_negatives"]


def _label_rate(cfg: HubertConfig) -> float | int:
    """fairseq's HuBERT declares ``label_rate: float``; the ContentVec reference ``int`` (its
    OmegaConf schema refuses ``50.0``), so ContentVec files get an integer when it is one."""
    rate = float(cfg.label_rate)
    return int(rate) if hasattr(cfg, "encoder_layers_1") and rate.is_integer() else rate


def _model_cfg_dict(cfg: HubertConfig) -> dict:
    is_contentvec = hasattr(cfg, "encoder_layers_1")
    out = {"_name": "contentvec" if is_contentvec else "hubert"}
    out.update({k: getattr(cfg, k) for k in FAIRSEQ_HUBERT_FIELDS})
    out["label_rate"] = _label_rate(cfg)
    if is_contentvec:
        out.update({k: getattr(cfg, k) for k in CONTENTVEC_FIELDS})
    return out


def _fairseq_cfg(cfg: HubertConfig, task_cfg: dict | None, n_sets: int) -> dict:
    is_contentvec = hasattr(cfg, "encoder_layers_1")
    task = {
        # ContentVec's registered names: task contentvec_pretraining, criterion contentvec
        "_name": "contentvec_pretraining" if is_contentvec else "hubert_pretraining",
        "data": "",
        "labels": ["km"] * n_sets,
        "label_dir": None,
        "label_rate": _label_rate(cfg),
        "sample_rate": cfg.sample_rate,
        "normalize": cfg.extractor_mode == "layer_norm",
        "enable_padding": False,
        "max_keep_size": None,
        "max_sample_size": 250000,
        "min_sample_size": 32000,
        "single_target": False,
        "random_crop": True,
        "pad_audio": False,
        "fine_tuning": False,
    }
    task.update(task_cfg or {})
    # fairseq reads fields of its general groups from a loaded checkpoint (e.g.
    # generation.print_alignment): write them all, at fairseq's defaults, in FairseqConfig's order
    out: dict[str, Any] = {"_name": None}
    for group, values in copy.deepcopy(FAIRSEQ_DEFAULT_GROUPS).items():
        out[group] = values
        if group == "interactive":  # FairseqConfig's order: model, task, criterion come next
            out["model"] = _model_cfg_dict(cfg)
            out["task"] = task
            out["criterion"] = {
                "_name": "contentvec" if is_contentvec else "hubert",
                "pred_masked_weight": 1.0,
                "pred_nomask_weight": 0.0,
                "loss_weights": [10.0],
                "log_keys": ["features_pen"],
            }
    return out


class _FairseqPickler(pickle._Pickler):
    """Pure-Python pickler that writes ``FairseqDictionary`` under fairseq's class name."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is FairseqDictionary:
            module, qualname = FAIRSEQ_DICTIONARY
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


_fairseq_pickle = types.ModuleType("speechkit_fairseq_pickle")
_fairseq_pickle.Pickler = _FairseqPickler
_fairseq_pickle.dump = lambda obj, f, protocol=2: _FairseqPickler(f, protocol).dump(obj)


def save_fairseq_checkpoint(
    model: HubertModel,
    cfg: HubertConfig | None,
    path: str | os.PathLike,
    dictionaries: list[FairseqDictionary] | None = None,
    task_cfg: dict | None = None,
    num_updates: int = 0,
) -> Path:
    """Write ``model`` as a fairseq-layout HuBERT checkpoint, atomically (temp, fsync, rename).

    Top-level keys: ``args`` (None), ``cfg`` (plain dict of fairseq's config groups: every
    general group of fairseq 0.12's ``FairseqConfig`` with all its fields at their defaults,
    from :mod:`speechkit.interop.fairseq_defaults`, so that fairseq's
    ``load_model_ensemble_and_task`` and the fine-tuning ``w2v_path`` route accept the file;
    ``model`` with ``_name: hubert`` and fairseq's field names only), ``model`` (state dict on
    the CPU), ``criterion`` (None), ``optimizer_history``, ``task_state`` (``{"dictionaries": [...]}``,
    pickled as ``fairseq.data.dictionary.Dictionary`` so fairseq can load the file) and
    ``extra_state``. No optimizer state (like released files).

    Args:
        model: the model. cfg: its config (default ``model.cfg``).
        path: output file. dictionaries: one per label set (default: k-means dictionaries
            matching ``cfg.num_classes``). task_cfg: entries merged into ``cfg["task"]``.
        num_updates: recorded in ``optimizer_history``.

    Raises:
        CheckpointError: dictionaries whose sizes do not match ``cfg.num_classes``.
        OSError: the folder is not writable (``path`` is then left as it was).
    """
    cfg = cfg if cfg is not None else model.cfg
    if dictionaries is None:
        dictionaries = [FairseqDictionary.for_kmeans(n - 4) for n in cfg.num_classes]
    sizes = [len(d) for d in dictionaries]
    if sizes != list(cfg.num_classes):
        raise CheckpointError(
            f"cannot write {path}: dictionary sizes {sizes} do not match num_classes "
            f"{list(cfg.num_classes)}"
        )
    state = {
        "args": None,
        "cfg": _fairseq_cfg(cfg, task_cfg, max(len(dictionaries), 1)),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": (
                    "ContentvecCriterion" if hasattr(cfg, "encoder_layers_1") else "HubertCriterion"
                ),
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": int(num_updates),
            }
        ],
        "task_state": {"dictionaries": list(dictionaries)},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 0.0,
            "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
            "val_loss": None,
            "best": None,
        },
    }
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(state, f, pickle_module=_fairseq_pickle, pickle_protocol=2)
    return path


def hubert_from_fairseq_checkpoint(
    path_or_ckpt: str | os.PathLike | dict, strict: bool = True
) -> tuple[HubertModel, HubertConfig, list[FairseqDictionary]]:
    """Build a ``HubertModel`` from a fairseq HuBERT or ContentVec-legacy checkpoint.

    Returns (model in eval mode, its config, the label dictionaries).

    Raises:
        CheckpointError: unreadable file, a ContentVec *full* checkpoint (speaker-conditioned
            layers ``encoder.layers.12+`` / ``layer_proj``, which HuBERT cannot hold), or
            weights that do not fit the config (names the missing / unexpected keys).
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_fairseq_checkpoint(path_or_ckpt)
    where = "checkpoint" if isinstance(path_or_ckpt, dict) else str(path_or_ckpt)
    cfg = hubert_config_from_fairseq(ckpt)
    state = ckpt["model"]
    if any(k.startswith("layer_proj.") or ".weight_ln." in k for k in state):
        raise CheckpointError(
            f"{where} is a full ContentVec checkpoint (speaker-conditioned layers, layer_proj); "
            "load it with the contentvec model, or use a ContentVec legacy checkpoint"
        )
    model = HubertModel(cfg)
    result = model.load_state_dict(state, strict=False)
    problems = list(result.missing_keys) + list(result.unexpected_keys)
    if strict and problems:
        raise CheckpointError(
            f"{where}: weights do not fit the HuBERT config (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    dicts = list((ckpt.get("task_state") or {}).get("dictionaries") or [])
    return model.eval(), cfg, dicts


def contentvec_from_fairseq_checkpoint(
    path_or_ckpt: str | os.PathLike | dict,
    strict: bool = True,
    cond_layer_norm_joint: bool = False,
) -> tuple[ContentVecModel, ContentVecConfig, list[FairseqDictionary]]:
    """Build a ``ContentVecModel`` from a full ContentVec checkpoint (reference or speechkit's
    fairseq layout): the HuBERT config, plus ``encoder_layers_1`` (counted from the
    ``encoder.layers.N.*`` keys above ``encoder_layers``), ``spk_dim`` (from the
    ``weight_ln`` shapes) and the contrastive settings of ``cfg.model`` when present.

    Args:
        path_or_ckpt: a file or a loaded checkpoint dict.
        strict: every weight must fit. cond_layer_norm_joint: True reproduces the reference's
            (B, C)-joint statistics (see ``speechkit.models.contentvec``); off by default.

    Returns:
        (model in eval mode, its ``ContentVecConfig``, the label dictionaries).

    Raises:
        CheckpointError: unreadable file, no speaker-conditioned layers (a HuBERT or ContentVec
            legacy checkpoint: use ``hubert_from_fairseq_checkpoint``), or weights that do not
            fit the config.
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_fairseq_checkpoint(path_or_ckpt)
    where = "checkpoint" if isinstance(path_or_ckpt, dict) else str(path_or_ckpt)
    hcfg = hubert_config_from_fairseq(ckpt)
    state = ckpt["model"]
    layer_ids = {
        int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.") and k[15].isdigit()
    }
    extra = sorted(i for i in layer_ids if i >= hcfg.encoder_layers)
    if not extra or f"encoder.layers.{extra[0]}.final_layer_norm.weight_ln.weight" not in state:
        raise CheckpointError(
            f"{where} has no speaker-conditioned layers above layer {hcfg.encoder_layers}: a "
            "HuBERT or ContentVec legacy checkpoint (load it with hubert_from_fairseq_checkpoint)"
        )
    spk_dim = int(state[f"encoder.layers.{extra[0]}.final_layer_norm.weight_ln.weight"].shape[1])
    src = ckpt.get("args") if ckpt.get("args") is not None else ckpt.get("cfg")
    if isinstance(src, dict) and isinstance(src.get("model"), dict):
        src = src["model"]
    values = {f.name: getattr(hcfg, f.name) for f in dataclasses.fields(hcfg)}
    values.update(encoder_layers_1=len(extra), spk_dim=spk_dim)
    defaults = ContentVecConfig()
    for name in ("ctr_layers", "logit_temp_ctr", "num_negatives"):
        value = _get(src, name, None) if src is not None else None
        if not _unset(value):
            values[name] = type(getattr(defaults, name))(value)
    if isinstance(values.get("ctr_layers"), list):
        values["ctr_layers"] = [int(v) for v in values["ctr_layers"]]
    cfg = ContentVecConfig(**values, cond_layer_norm_joint=cond_layer_norm_joint)
    model = ContentVecModel(cfg)
    result = model.load_state_dict(state, strict=False)
    problems = list(result.missing_keys) + list(result.unexpected_keys)
    if strict and problems:
        raise CheckpointError(
            f"{where}: weights do not fit the ContentVec config (missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    dicts = list((ckpt.get("task_state") or {}).get("dictionaries") or [])
    return model.eval(), cfg, dicts
