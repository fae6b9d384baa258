"""Registries for tasks, models, criterions, optimizers and LR schedulers.

A registry maps a snake_case name to a class and the dataclass that configures it. Registering
also stores the dataclass in Hydra's ConfigStore under the registry's group, so
``python -m speechkit.train model=resnet_se34l`` selects it and ``model.n_mels=64`` is checked
against its fields. This follows fairseq's ``register_*`` decorators (fairseq/registry.py).

Task-implied defaults: a task may name the model and criterion it is normally trained with
(``register_task("hubert", ..., default_model="hubert", default_criterion="hubert")``), so
``python -m speechkit.train task=hubert task.data=...`` needs no ``model=`` / ``criterion=``.
``configs/train.yaml`` selects them in its defaults list through the OmegaConf resolver
``speechkit.task_default`` (registered when this module is imported)::

    - model: ${speechkit.task_default:model}

Hydra resolves such an entry only after every other choice is known and only when nothing
overrides it, so the order of precedence is: ``model=`` on the command line, then an
``experiment=`` preset's ``override /model``, then the task's default. A task without a default
leaves the group missing (Hydra's "You must specify 'model'"), as does a command without a task;
``-m`` sweeps over ``task=`` or ``experiment=`` resolve it per job.

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
        self._defaults: dict[str, dict[str, str]] = {}

    def register(
        self,
        name: str,
        dataclass: type[SpeechkitDataclass] | None = None,
        defaults: dict[str, str | None] | None = None,
    ) -> Callable:
        """Decorator registering ``cls`` under ``name`` with its config ``dataclass``.

        Args:
            defaults: other config groups' choices this entry implies (``{"model": "hubert"}``),
                read back by :meth:`default_choice`; ``None`` values are left out.
        """

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
            self._defaults[name] = {g: v for g, v in (defaults or {}).items() if v}
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

    def default_choice(self, name: str, group: str) -> str | None:
        """The ``group`` choice (e.g. the model name) that entry ``name`` implies, or None
        (also for an unknown ``name``)."""
        return self._defaults.get(name, {}).get(group)

    def defaults(self, name: str) -> dict[str, str]:
        """Every group choice that entry ``name`` implies (``{}`` when none)."""
        self.get(name)
        return dict(self._defaults[name])

    def _missing_error(self, name: str, missing: list[str]) -> ConfigError:
        cls = self._classes[name]
        hook = getattr(cls, "missing_config_error", None)
        if callable(hook):
            return hook(missing)
        keys = ", ".join(f"{self.group}.{k}" for k in missing)
        return ConfigError(
            f"{self.group} {name}: required {keys} not set; set it on the command line "
            f"({self.group}.{missing[0]}=...)"
        )

    def resolve_config(self, cfg: Any) -> tuple[str, SpeechkitDataclass]:
        """Turn a composed config node (or a dataclass instance) into ``(name, dataclass)``.

        Missing fields are filled from the registered defaults (fairseq's merge_with_parent);
        unknown fields raise ``ConfigError``, and so do required fields left unset (``???``):
        the class's ``missing_config_error(keys) -> ConfigError`` gives the message when it has
        one (tasks: what data they need), else a generic one naming the keys.
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
        rank = {f.name: i for i, f in enumerate(dataclasses.fields(dc))}  # the config's order
        missing = sorted(
            OmegaConf.missing_keys(merged), key=lambda k: (rank.get(k.split(".")[0], 0), k)
        )
        if missing:
            raise self._missing_error(name, missing)
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


def register_task(
    name: str,
    dataclass: type[SpeechkitDataclass] | None = None,
    default_model: str | None = None,
    default_criterion: str | None = None,
) -> Callable:
    """Register a task class (subclass of ``speechkit.tasks.base.Task``).

    Args:
        default_model, default_criterion: registered names selected when the command line and
            the ``experiment=`` preset choose none (see the module docstring).
    """
    return TASK_REGISTRY.register(
        name, dataclass, defaults={"model": default_model, "criterion": default_criterion}
    )


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


TASK_DEFAULT_RESOLVER = "speechkit.task_default"
"""Name of the OmegaConf resolver ``${speechkit.task_default:GROUP}`` used in train.yaml."""


def task_default_choice(group: str, *, _root_: Any = None) -> str:
    """Resolver body: the chosen task's default for ``group``, or ``???`` (missing).

    ``_root_`` is Hydra's map of the choices made so far (the ``task`` key is the task name, or
    missing when no task was chosen).
    """
    task = OmegaConf.select(_root_, "task", default=None, throw_on_missing=False)
    choice = TASK_REGISTRY.default_choice(task, group) if isinstance(task, str) else None
    return choice or "???"


if not OmegaConf.has_resolver(TASK_DEFAULT_RESOLVER):
    OmegaConf.register_new_resolver(TASK_DEFAULT_RESOLVER, task_default_choice)
