"""Shared fixtures.

``shared_data`` finds ``../shared/data`` (or ``$SPEECHKIT_SHARED_DATA``). Without it a test is
skipped on a developer's machine, but under ``CI=true`` its absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs as 2 xdist workers on 2 cores: one intra-op thread each (and in the
    # subprocesses the tests start, see tests/helpers.py) avoids oversubscription
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def find_shared_data() -> Path | None:
    env = os.environ.get("SPEECHKIT_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "lists").is_dir():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real test data folder (``shared/data``). Its absence fails the test (in CI
    and locally alike): real-data tests are part of the suite, never skipped."""
    path = find_shared_data()
    if path is None:
        pytest.fail(
            "../shared/data not found (set SPEECHKIT_SHARED_DATA to the folder): the real-data "
            "tests must run"
        )
    return path


SLOWEST_MODULES = (
    "test_pretraining_real_data.py",  # 175 s
    "test_sv_real_data.py",  # 170 s
    "test_enhancement_pipeline.py",  # 50 s
    "test_syncnet_real_data.py",  # 45 s
    "test_voicevector_variants_real_data.py",  # 45 s
    "test_resume_and_signals.py",  # 45 s
)
"""Test files measured slowest (seconds on one worker of the 2-core CI machine), slowest first.
The suite runs as ``pytest -n 2 --dist loadfile`` with ``--no-loadscope-reorder``
(pyproject.toml): xdist hands out whole files in collection order, so these start first and
the many short files fill in around them. xdist's default order (files with more tests first)
started the 430 s file, which has 6 tests, late in the run, where it set the wall time."""


def pytest_collection_modifyitems(config, items):
    """Markers ``pytest -m`` can select: ``real_data`` on every test that uses ``shared_data``;
    ``slow`` (set in the slow modules); ``gpu`` tests run only when the ``-m`` expression names
    ``gpu`` (``pytest -m gpu``): elsewhere they are deselected, as CI has no GPU. The files of
    ``SLOWEST_MODULES`` are moved to the front, in that order (the rest keep theirs)."""
    first = {name: rank for rank, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
    if "gpu" in (config.option.markexpr or ""):
        return
    deselected = [i for i in items if i.get_closest_marker("gpu")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if not i.get_closest_marker("gpu")]
