"""Registries for tasks, models, criterions, optimizers and LR schedulers.

A registry maps a snake_case name to a class and the dataclass that configures it. Registering
also stores the dataclass in Hydra's ConfigStore under the registry's group, so
``python -m speechkit.train model=resnet_se34l`` selects it and ``model.n_mels=64`` is checked
against its fields. This follows fairseq's ``register_*`` decorators (fairseq/registry.py).

Aliases: an entry renamed to the naming convention (lowercase words joined by ``_``, e.g.
``aam_softmax``) keeps its former name as an alias (``register_criterion("aam_softmax", ...,
aliases=("aamsoftmax",))``): ``criterion=aamsoftmax`` and a checkpoint that stores
``_name: aamsoftmax`` still work, and both resolve to the canonical name (the composed config's
``_name`` is ``aam_softmax``). The README lists every alias.

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
import enum
from collections.abc import Callable
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError


class ChoiceEnum(str, enum.Enum):
    """Base of the choice fields of config dataclasses (``encoder_type: ResNetPooling = ...``).

    A member's name is its value, so Hydra/OmegaConf accept the plain string in YAML and on the
    command line (``model.encoder_type=ASP``) and reject any other one when the config is
    composed, naming the field and the allowed values (``Invalid value 'TAP', expected one of
    [SAP, ASP]``, ``full_key: model.encoder_type``). Members compare equal to their strings
    (``ResNetPooling.SAP == "SAP"``) and print as them.

    Plain strings at run time: defaults are written as strings (``encoder_type: ResNetPooling =
    "SAP"``) and :meth:`Registry.resolve_config` turns the members OmegaConf produces back into
    strings, so a built config holds plain strings and a checkpoint never pickles an enum
    (``torch.load(weights_only=True)`` refuses one). Code that builds a config in Python checks
    a value with :meth:`check`.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The allowed strings, in declaration order."""
        return tuple(m.value for m in cls)

    @classmethod
    def check(cls, value: Any, where: str) -> str:
        """``value`` as a plain string when it is one of the choices.

        For configs built in Python, where OmegaConf does not check the field.

        Args:
            value: a member or its string.
            where: the owner and field, e.g. ``"resnet_se34l: encoder_type"``.

        Raises:
            ConfigError: ``"<where> must be one of 'a', 'b' or 'c', got '<value>'"``.
        """
        text = value.value if isinstance(value, cls) else value
        if text not in cls.choices():
            quoted = [repr(c) for c in cls.choices()]
            alternatives = " or ".join(
                [", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted
            )
            raise ConfigError(f"{where} must be one of {alternatives}, got {text!r}")
        return str(text)


def _plain_choices(obj: Any) -> Any:
    """Replace enum members by their values in a dataclass (recursively), in place."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, enum.Enum):
                object.__setattr__(obj, f.name, value.value)
            else:
                _plain_choices(value)
    elif isinstance(obj, list | tuple):
        for item in obj:
            _plain_choices(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            _plain_choices(item)
    return obj


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
        self._aliases: dict[str, str] = {}  # former name -> canonical name

    def register(
        self,
        name: str,
        dataclass: type[SpeechkitDataclass] | None = None,
        defaults: dict[str, str | None] | None = None,
        aliases: tuple[str, ...] | list[str] = (),
    ) -> Callable:
        """Decorator registering ``cls`` under ``name`` with its config ``dataclass``.

        Args:
            defaults: other config groups' choices this entry implies (``{"model": "hubert"}``),
                read back by :meth:`default_choice`; ``None`` values are left out.
            aliases: former names that keep selecting this entry (``criterion=aamsoftmax``,
                a checkpoint whose config stores ``_name: aamsoftmax``). Each is also stored in
                the ConfigStore, with ``_name`` set to the canonical ``name``, so a composed
                config and a saved checkpoint always carry the canonical name.

        Raises:
            ConfigError: ``name`` or an alias is already taken (as a name or an alias).
        """

        def wrapper(cls: type) -> type:
            for new in (name, *aliases):
                if new in self._classes or new in self._aliases:
                    owner = self._classes[self.canonical(new)].__qualname__
                    raise ConfigError(
                        f"cannot register {self.group} '{new}' ({cls.__module__}."
                        f"{cls.__name__}): the name is already taken by {owner}"
                    )
            if len(set(aliases)) != len(aliases) or name in aliases:
                raise ConfigError(f"{self.group} '{name}': repeated alias in {list(aliases)}")
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
            self._aliases.update({alias: name for alias in aliases})
            cls.__speechkit_name__ = name
            for option in (name, *aliases):
                node = dc()
                node._name = name
                ConfigStore.instance().store(
                    group=self.group, name=option, node=node, provider="speechkit"
                )
            return cls

        return wrapper

    def __contains__(self, name: str) -> bool:
        return name in self._classes or name in self._aliases

    def names(self) -> list[str]:
        """The canonical names, sorted (aliases left out: see :meth:`aliases`)."""
        return sorted(self._classes)

    def aliases(self) -> dict[str, str]:
        """Former name -> canonical name, sorted by former name."""
        return dict(sorted(self._aliases.items()))

    def canonical(self, name: str) -> str:
        """The canonical name of ``name`` (itself when it is not an alias; not checked)."""
        return self._aliases.get(name, name)

    def get(self, name: str) -> type:
        """The class registered under ``name`` or an alias of it.

        Raises:
            ConfigError: unknown name, listing the known names.
        """
        name = self.canonical(name)
        if name not in self._classes:
            raise ConfigError(
                f"unknown {self.group} '{name}'; known {self.group}s: {', '.join(self.names())}"
            )
        return self._classes[name]

    def dataclass(self, name: str) -> type[SpeechkitDataclass]:
        self.get(name)
        return self._dataclasses[self.canonical(name)]

    def default_choice(self, name: str, group: str) -> str | None:
        """The ``group`` choice (e.g. the model name) that entry ``name`` implies, or None
        (also for an unknown ``name``); an alias in the other group is made canonical."""
        choice = self._defaults.get(self.canonical(name), {}).get(group)
        other = _REGISTRIES.get(group)
        return other.canonical(choice) if choice and other is not None else choice

    def defaults(self, name: str) -> dict[str, str]:
        """Every group choice that entry ``name`` implies (``{}`` when none), canonical."""
        self.get(name)
        return {g: self.default_choice(name, g) for g in self._defaults[self.canonical(name)]}

    def _missing_error(self, name: str, missing: list[str]) -> ConfigError:
        cls = self.get(name)
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

        ``name`` is canonical: a config (or an old checkpoint's) that names an alias resolves
        to the entry it stands for, and the returned dataclass's ``_name`` is the canonical one.
        Choice fields (:class:`ChoiceEnum`) are checked by the merge and come back as plain
        strings.

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
            cfg._name = self.canonical(name)
            return cfg._name, cfg
        if isinstance(cfg, str):
            name, node = cfg, {}
        elif isinstance(cfg, DictConfig):
            # resolved against the whole config first: ``${paths.data_root}`` points outside
            # the node, and the merge below gives it a new root
            node = OmegaConf.to_container(cfg, resolve=True)
            name = node.get("_name")
        elif isinstance(cfg, dict):
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
        name = self.canonical(name)
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
        obj = _plain_choices(OmegaConf.to_object(merged))
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
_REGISTRIES = {
    r.group: r
    for r in (
        TASK_REGISTRY,
        MODEL_REGISTRY,
        CRITERION_REGISTRY,
        OPTIMIZER_REGISTRY,
        LR_SCHEDULER_REGISTRY,
    )
}


def register_task(
    name: str,
    dataclass: type[SpeechkitDataclass] | None = None,
    default_model: str | None = None,
    default_criterion: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Callable:
    """Register a task class (subclass of ``speechkit.tasks.base.Task``).

    Args:
        default_model, default_criterion: registered names selected when the command line and
            the ``experiment=`` preset choose none (see the module docstring); an alias is
            resolved to its canonical name.
        aliases: former names of the task (see :meth:`Registry.register`).
    """
    return TASK_REGISTRY.register(
        name,
        dataclass,
        defaults={"model": default_model, "criterion": default_criterion},
        aliases=aliases,
    )


def register_model(
    name: str, dataclass: type[SpeechkitDataclass] | None = None, aliases: tuple[str, ...] = ()
) -> Callable:
    """Register a model (an ``nn.Module`` built as ``cls(cfg)``); ``aliases``: former names."""
    return MODEL_REGISTRY.register(name, dataclass, aliases=aliases)


def register_criterion(
    name: str, dataclass: type[SpeechkitDataclass] | None = None, aliases: tuple[str, ...] = ()
) -> Callable:
    """Register a criterion (built as ``cls(cfg, task)``); ``aliases``: former names."""
    return CRITERION_REGISTRY.register(name, dataclass, aliases=aliases)


def register_optimizer(
    name: str, dataclass: type[SpeechkitDataclass] | None = None, aliases: tuple[str, ...] = ()
) -> Callable:
    """Register an optimizer builder (built as ``cls(cfg, params, lr)``)."""
    return OPTIMIZER_REGISTRY.register(name, dataclass, aliases=aliases)


def register_lr_scheduler(
    name: str, dataclass: type[SpeechkitDataclass] | None = None, aliases: tuple[str, ...] = ()
) -> Callable:
    """Register an LR scheduler (built as ``cls(cfg, optimizer, base_lr, max_update)``)."""
    return LR_SCHEDULER_REGISTRY.register(name, dataclass, aliases=aliases)


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
