"""Default folders of the data-preparation commands.

Outputs default to ``$SPEECHKIT_DEMO_DATA``, else ``demo_data/`` under the current directory, where the demo presets of
``configs/experiment/`` read them (``task.train_list=demo_data/...``, relative to the folder
training starts in). The shared test data is looked up in ``--shared``/``--data``, then
``$SPEECHKIT_SHARED_DATA``, then ``../shared/data`` beside the current directory and beside the
checkout that holds this package (``setup.sh`` installs it editable).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEMO_DATA", "find_shared_data", "shared_data_candidates"]

DEMO_DATA = Path(os.environ.get("SPEECHKIT_DEMO_DATA") or "demo_data")
"""Default output folder of the demo-data commands: ``$SPEECHKIT_DEMO_DATA`` when set (the
presets' ``paths.demo_root`` reads the same variable), else ``demo_data`` relative to the current
directory."""

_CHECKOUT = Path(__file__).resolve().parents[2]


def shared_data_candidates() -> list[Path]:
    """Folders that may hold the shared test data, in the order they are tried."""
    candidates = []
    if os.environ.get("SPEECHKIT_SHARED_DATA"):
        candidates.append(Path(os.environ["SPEECHKIT_SHARED_DATA"]))
    candidates += [Path.cwd().parent / "shared" / "data", _CHECKOUT.parent / "shared" / "data"]
    return candidates


def find_shared_data(marker: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """The shared test-data folder: ``explicit`` when given, else the first of
    ``shared_data_candidates()`` that holds the file ``marker``.

    Args:
        marker: a path relative to the data folder that must exist there (e.g.
            ``lists/pretrain_manifest.tsv``).
        explicit: the folder the user named (only this one is tried).

    Returns:
        The resolved folder, or None when it lacks ``marker`` (callers name ``explicit`` in
        their own error).
    """
    for folder in [Path(explicit)] if explicit else shared_data_candidates():
        if (folder / marker).is_file():
            return folder.resolve()
    return None
