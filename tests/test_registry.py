from dataclasses import dataclass

import pytest
from hydra.core.config_store import ConfigStore
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import Registry


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
