"""Registries for tasks, models, criterions, optimizers and LR schedulers.

A registry maps a snake_case name to a class and the dataclass that configures it. Registering
also stores the dataclass in Hydra's ConfigStore under the registry's group, so
``python -m speechkit.train model=resnet_se34l`` selects it and ``model.n_mels=64`` is checked
against its fields. This follows fairseq's ``register_*`` decorators (fairseq/registry.py).

Example (a user's own module, loaded with ``common.user_dir=/path/to/module``)::

    from dataclasses import dataclass
    from speechkit.dataclass import SpeechkitDataclass
    from speechkit.registry import register_model

    @dataclass
    class TinyConfig(SpeechkitDataclass):
        dim: int = 64

    @register_model("tiny", dataclass=TinyConfig)
    class Tiny(torch.nn.Module):
        def __init__(self, cfg: TinyConfig): ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError


class Registry:
    """Name -> (class, config dataclass) for one Hydra config group.

    Args:
        group: the Hydra config group (``"task"``, ``"model"`` ...).
        base_class: registered classes must subclass it (``None``: anything).

    Raises:
        ConfigError: on a duplicate name, a config that is not a ``SpeechkitDataclass``, a class
            that does not subclass ``base_class``, or (``get``/``build``) an unknown name, with
            the list of known names.
    """

    def __init__(self, group: str, base_class: type | None = None):
        self.group = group
        self.base_class = base_class
        self._classes: dict[str, type] = {}
        self._dataclasses: dict[str, type[SpeechkitDataclass]] = {}

    def register(self, name: str, dataclass: type[SpeechkitDataclass] | None = None) -> Callable:
        """Decorator registering ``cls`` under ``name`` with its config ``dataclass``."""

        def wrapper(cls: type) -> type:
            if name in self._classes:
                raise ConfigError(
                    f"cannot register {self.group} '{name}' ({cls.__module__}.{cls.__name__}): "
                    f"the name is already taken by {self._classes[name].__qualname__}"
                )
            if self.base_class is not None and not issubclass(cls, self.base_class):
                raise ConfigError(
                    f"{self.group} '{name}': {cls.__name__} must subclass "
                    f"{self.base_class.__name__}"
                )
            dc = dataclass if dataclass is not None else SpeechkitDataclass
            if not (dataclasses.is_dataclass(dc) and issubclass(dc, SpeechkitDataclass)):
                raise ConfigError(
                    f"{self.group} '{name}': config {dc!r} must be a dataclass subclassing "
                    "speechkit.dataclass.SpeechkitDataclass"
                )
            self._classes[name] = cls
            self._dataclasses[name] = dc
            cls.__speechkit_name__ = name
            node = dc()
            node._name = name
            ConfigStore.instance().store(
                group=self.group, name=name, node=node, provider="speechkit"
            )
            return cls

        return wrapper

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ConfigError(
                f"unknown {self.group} '{name}'; known {self.group}s: {', '.join(self.names())}"
            )
        return self._classes[name]

    def dataclass(self, name: str) -> type[SpeechkitDataclass]:
        self.get(name)
        return self._dataclasses[name]

    def resolve_config(self, cfg: Any) -> tuple[str, SpeechkitDataclass]:
        """Turn a composed config node (or a dataclass instance) into ``(name, dataclass)``.

        Missing fields are filled from the registered defaults (fairseq's merge_with_parent);
        unknown fields raise ``ConfigError``.
        """
        if isinstance(cfg, SpeechkitDataclass):
            name = cfg._name
            if name is None:
                raise ConfigError(f"{self.group} config {type(cfg).__name__} has no _name")
            self.get(name)
            return name, cfg
        if isinstance(cfg, str):
            name, node = cfg, {}
        elif isinstance(cfg, DictConfig | dict):
            name = cfg.get("_name")
            node = cfg
        else:
            raise ConfigError(f"{self.group} config must be a mapping, got {type(cfg).__name__}")
        if not name:
            raise ConfigError(
                f"the {self.group} config has no _name; pick one with {self.group}=NAME "
                f"(known: {', '.join(self.names())})"
            )
        dc = self.dataclass(name)
        schema = OmegaConf.structured(dc)
        try:
            merged = OmegaConf.merge(schema, node)
        except Exception as e:  # omegaconf raises several error types
            raise ConfigError(f"invalid {self.group} config for '{name}': {e}") from None
        obj = OmegaConf.to_object(merged)
        obj._name = name
        return name, obj

    def build(self, cfg: Any, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the registered class: ``cls(cfg_dataclass, *args, **kwargs)``."""
        name, obj = self.resolve_config(cfg)
        return self._classes[name](obj, *args, **kwargs)


TASK_REGISTRY = Registry("task")
MODEL_REGISTRY = Registry("model")
CRITERION_REGISTRY = Registry("criterion")
OPTIMIZER_REGISTRY = Registry("optimizer")
LR_SCHEDULER_REGISTRY = Registry("lr_scheduler")


def register_task(name: str, dataclass: type[SpeechkitDataclass] | None = None) -> Callable:
    """Register a task class (subclass of ``speechkit.tasks.base.Task``)."""
    return TASK_REGISTRY.register(name, dataclass)


def register_model(name: str, dataclass: type[SpeechkitDataclass] | None = None) -> Callable:
    """Register a model (an ``nn.Module`` built as ``cls(cfg)``)."""
    return MODEL_REGISTRY.register(name, dataclass)


def register_criterion(name: str, dataclass: type[SpeechkitDataclass] | None = None) -> Callable:
    """Register a criterion (built as ``cls(cfg, task)``)."""
    return CRITERION_REGISTRY.register(name, dataclass)


def register_optimizer(name: str, dataclass: type[SpeechkitDataclass] | None = None) -> Callable:
    """Register an optimizer builder (built as ``cls(cfg, params, lr)``)."""
    return OPTIMIZER_REGISTRY.register(name, dataclass)


def register_lr_scheduler(name: str, dataclass: type[SpeechkitDataclass] | None = None) -> Callable:
    """Register an LR scheduler (built as ``cls(cfg, optimizer, base_lr, max_update)``)."""
    return LR_SCHEDULER_REGISTRY.register(name, dataclass)
