"""The one JSON line every benchmark in ``benchmarks/`` ends with, and its stderr log.

A run prints human-readable progress on stderr (``log``) and exactly one JSON object on stdout
(``report``), so that ``python benchmarks/NAME.py > run.json`` gives a file one run can be
compared with the next. The object has the keys of ``FIELDS``:

- ``name``: the benchmark (script name, plus the part measured when a script has several);
- ``device``: where it ran, e.g. ``"cpu: 2 cores, 1 torch thread(s)"`` or ``"cuda: NVIDIA H100"``;
- ``config``: a JSON object of the settings that change the figure (batch, lengths, ...);
- ``figure``: the measured value, in ``unit``;
- ``unit``: its unit, and whether higher or lower is better;
- ``reference``: what the reference figure measures (an upstream library, the old code path);
- ``reference_figure``: the reference, measured in the same process, in ``unit``;
- ``ratio``: ``figure / reference_figure``.

Scripts import it as ``from _report import ...``: Python puts the running script's folder first
on ``sys.path``, so ``python benchmarks/NAME.py`` finds it without any path edit.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

__all__ = ["FIELDS", "device_label", "log", "report"]

FIELDS = ("name", "device", "config", "figure", "unit", "reference", "reference_figure", "ratio")


def log(*parts: object) -> None:
    """Print a progress line to stderr (stdout carries only the JSON line)."""
    print(*parts, file=sys.stderr, flush=True)


def device_label(device: str = "cpu") -> str:
    """A short description of ``device`` ("cpu" or "cuda[:N]") for the ``device`` field.

    The CPU label gives the cores this process may use and torch's intra-op threads; the CUDA
    label the card's name (``torch.cuda.get_device_name``).
    """
    import torch

    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu: {cores} cores, {torch.get_num_threads()} torch thread(s)"


def _round(value: float) -> float:
    """``value`` to 4 significant digits (timings on a shared machine carry no more)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, 3 - math.floor(math.log10(abs(value))))


def report(
    name: str,
    device: str,
    config: dict[str, Any],
    figure: float,
    unit: str,
    reference: str,
    reference_figure: float,
) -> dict[str, Any]:
    """Print the benchmark's JSON line on stdout and return it as a dict.

    Args:
        name: benchmark name.
        device: where it ran (see ``device_label``).
        config: JSON-serialisable settings of the run.
        figure: the measured value, in ``unit``.
        unit: unit of ``figure`` and ``reference_figure``, with the better direction.
        reference: what ``reference_figure`` measures.
        reference_figure: the reference value, in ``unit``.

    Returns:
        The printed object; ``ratio`` is ``figure / reference_figure``.

    Raises:
        ValueError: when a figure is not a finite number or ``reference_figure`` is 0, or
            ``config`` is not a dict (nothing is printed then).
    """
    if not isinstance(config, dict):
        raise ValueError(f"benchmark {name}: config is {type(config).__name__}; expected a dict")
    for key, value in (("figure", figure), ("reference_figure", reference_figure)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"benchmark {name}: {key} is {value!r}; expected a finite number")
    if reference_figure == 0:
        raise ValueError(f"benchmark {name}: reference_figure is 0; expected a non-zero number")
    record = {
        "name": name,
        "device": device,
        "config": config,
        "figure": _round(float(figure)),
        "unit": unit,
        "reference": reference,
        "reference_figure": _round(float(reference_figure)),
        "ratio": _round(float(figure) / float(reference_figure)),
    }
    print(json.dumps(record), flush=True)
    return record
