import re
from dataclasses import dataclass

import pytest
from hydra.core.config_store import ConfigStore
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import ChoiceEnum, Registry


@dataclass
class _Cfg(SpeechkitDataclass):
    width: int = 4


def test_register_build_and_configstore():
    reg = Registry("test_group_a")

    @reg.register("tiny_thing", dataclass=_Cfg)
    class Tiny(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg

    obj = reg.build({"_name": "tiny_thing", "width": 7})
    assert isinstance(obj, Tiny) and obj.cfg.width == 7
    # defaults are filled from the dataclass (fairseq's merge_with_parent)
    assert reg.build({"_name": "tiny_thing"}).cfg.width == 4
    repo = ConfigStore.instance().repo
    assert "tiny_thing.yaml" in repo["test_group_a"]


def test_duplicate_name_refused():
    reg = Registry("test_group_b")
    reg.register("same", dataclass=_Cfg)(type("A", (), {}))
    with pytest.raises(ConfigError, match="already taken"):
        reg.register("same", dataclass=_Cfg)(type("B", (), {}))


def test_unknown_name_lists_known():
    reg = Registry("test_group_c")
    reg.register("alpha", dataclass=_Cfg)(type("A", (), {}))
    reg.register("beta", dataclass=_Cfg)(type("B", (), {}))
    with pytest.raises(
        ConfigError, match=r"unknown test_group_c 'gamma'; known test_group_cs: alpha, beta"
    ):
        reg.build({"_name": "gamma"})


def test_unknown_field_refused():
    reg = Registry("test_group_d")
    reg.register("alpha", dataclass=_Cfg)(type("A", (), {"__init__": lambda self, cfg: None}))
    with pytest.raises(ConfigError, match="widht"):
        reg.build({"_name": "alpha", "widht": 3})


def test_config_must_be_speechkit_dataclass():
    reg = Registry("test_group_e")

    @dataclass
    class Plain:
        x: int = 1

    with pytest.raises(ConfigError, match="SpeechkitDataclass"):
        reg.register("x", dataclass=Plain)(type("A", (), {}))


# --------------------------------------------------------------------------------------------
# aliases and choice fields


class _Pool(ChoiceEnum):
    SAP = "SAP"
    ASP = "ASP"


@dataclass
class _ChoiceCfg(SpeechkitDataclass):
    pool: _Pool = "SAP"
    width: int = 4


def test_alias_resolves_to_canonical_name():
    reg = Registry("test_group_f")

    @reg.register("new_name", dataclass=_ChoiceCfg, aliases=("oldname",))
    class Thing:
        def __init__(self, cfg):
            self.cfg = cfg

    assert reg.names() == ["new_name"] and reg.aliases() == {"oldname": "new_name"}
    assert (
        "oldname" in reg and reg.get("oldname") is Thing and reg.canonical("oldname") == "new_name"
    )
    assert reg.dataclass("oldname") is _ChoiceCfg
    # an old config / checkpoint naming the alias builds the entry, under the canonical name
    name, obj = reg.resolve_config({"_name": "oldname", "width": 2})
    assert (name, obj._name, obj.width) == ("new_name", "new_name", 2)
    assert reg.build({"_name": "oldname"}).cfg._name == "new_name"
    assert Thing.__speechkit_name__ == "new_name"
    # the alias is a ConfigStore option of the group whose node carries the canonical name
    repo = ConfigStore.instance().repo["test_group_f"]
    assert repo["oldname.yaml"].node._name == "new_name"
    assert repo["new_name.yaml"].node._name == "new_name"


def test_alias_clashes_refused():
    reg = Registry("test_group_g")
    reg.register("alpha", dataclass=_Cfg, aliases=("a",))(type("A", (), {}))
    with pytest.raises(ConfigError, match="'a'.*already taken by A"):
        reg.register("beta", dataclass=_Cfg, aliases=("a",))(type("B", (), {}))
    with pytest.raises(ConfigError, match="'alpha'.*already taken"):
        reg.register("gamma", dataclass=_Cfg, aliases=("alpha",))(type("C", (), {}))
    with pytest.raises(ConfigError, match="'a'.*already taken"):
        reg.register("a", dataclass=_Cfg)(type("D", (), {}))


def test_choice_field_checked_at_merge_and_plain_afterwards():
    reg = Registry("test_group_h")
    reg.register("thing", dataclass=_ChoiceCfg)(type("A", (), {"__init__": lambda s, c: None}))
    _, obj = reg.resolve_config({"_name": "thing", "pool": "ASP"})
    # a plain str (pickles without the enum class: torch.load(weights_only=True) reads it)
    assert obj.pool == "ASP" and type(obj.pool) is str
    with pytest.raises(ConfigError, match=r"Invalid value 'TAP', expected one of \[SAP, ASP\]"):
        reg.resolve_config({"_name": "thing", "pool": "TAP"})
    assert _Pool.check("SAP", "x: pool") == "SAP" and _Pool.check(_Pool.ASP, "x") == "ASP"
    with pytest.raises(ConfigError, match=r"^x: pool must be one of 'SAP' or 'ASP', got 'TAP'$"):
        _Pool.check("TAP", "x: pool")
    assert f"{_Pool.SAP}" == str(_Pool.SAP) == "SAP" and _Pool.choices() == ("SAP", "ASP")


# the renamed entries of the real registries: old name -> canonical name
RENAMED_CRITERIONS = {
    "amsoftmax": "am_softmax",
    "aamsoftmax": "aam_softmax",
    "angleproto": "angle_proto",
    "softmaxproto": "softmax_proto",
    "enh_mse": "embedding_mse",
    "enh_mae": "embedding_mae",
    "enh_cosine": "embedding_cosine",
    "enh_mse_cosine": "embedding_mse_cosine",
    "enh_softmax": "embedding_softmax",
    "enh_mse_softmax": "embedding_mse_softmax",
    "enh_triplet_cosine": "embedding_triplet_cosine",
    "enh_mmd_cosine": "embedding_mmd_cosine",
    "enh_mmd_mse": "embedding_mmd_mse",
}


def test_real_registry_names_are_snake_case_and_old_names_remain():
    from speechkit.registry import (
        CRITERION_REGISTRY,
        LR_SCHEDULER_REGISTRY,
        MODEL_REGISTRY,
        OPTIMIZER_REGISTRY,
        TASK_REGISTRY,
    )
    from tests.helpers import prepare_registries

    prepare_registries()
    snake = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
    for reg in (
        TASK_REGISTRY,
        MODEL_REGISTRY,
        CRITERION_REGISTRY,
        OPTIMIZER_REGISTRY,
        LR_SCHEDULER_REGISTRY,
    ):
        bad = [n for n in reg.names() if not snake.match(n)]
        assert not bad, (reg.group, bad)
    assert CRITERION_REGISTRY.aliases() == dict(sorted(RENAMED_CRITERIONS.items()))
    for old, new in RENAMED_CRITERIONS.items():
        assert CRITERION_REGISTRY.get(old) is CRITERION_REGISTRY.get(new)
    # a task that still names an old criterion as its default gets the canonical one
    for task in TASK_REGISTRY.names():
        for group, choice in TASK_REGISTRY.defaults(task).items():
            assert choice in {"model": MODEL_REGISTRY, "criterion": CRITERION_REGISTRY}[group]
            assert choice not in RENAMED_CRITERIONS, (task, choice)
