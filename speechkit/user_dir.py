"""Importing a researcher's own module (``common.user_dir=PATH``), as fairseq's user_dir.

The module is imported *before* Hydra composes the config, so the models, tasks and criterions it
registers are selectable by name on the same command line.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from speechkit.errors import ConfigError


def import_user_module(path: str) -> None:
    """Import ``path``: a package folder (with ``__init__.py``) or a single ``.py`` file.

    Raises:
        ConfigError: the path does not exist or is neither a package nor a .py file.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ConfigError(f"common.user_dir={path}: no such file or folder")
    if p.is_dir():
        if not (p / "__init__.py").is_file():
            raise ConfigError(f"common.user_dir={path}: folder has no __init__.py")
        parent = str(p.parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
        importlib.import_module(p.name)
        return
    if p.suffix != ".py":
        raise ConfigError(f"common.user_dir={path}: expected a package folder or a .py file")
    name = f"speechkit_user_{p.stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def user_dir_from_argv(argv: Sequence[str]) -> str | None:
    """The value of a ``common.user_dir=...`` override on the command line, if any."""
    for arg in argv:
        for prefix in ("common.user_dir=", "+common.user_dir=", "++common.user_dir="):
            if arg.startswith(prefix):
                return arg[len(prefix) :] or None
    return None
