"""The one JSON line of ``benchmarks/``: the shared writer, and one benchmark run end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_report():
    spec = importlib.util.spec_from_file_location("_report", BENCHMARKS / "_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_prints_one_line_with_every_field(capsys):
    report = load_report()
    record = report.report(
        name="toy",
        device="cpu: 2 cores, 1 torch thread(s)",
        config={"batch": 4},
        figure=0.123456,
        unit="s (lower is better)",
        reference="the old path",
        reference_figure=0.5,
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    parsed = json.loads(out)
    assert parsed == record
    assert tuple(parsed) == report.FIELDS
    assert parsed["figure"] == 0.1235  # 4 significant digits
    assert parsed["ratio"] == pytest.approx(0.123456 / 0.5, rel=1e-3)


@pytest.mark.parametrize(
    "figure, reference_figure, config, match",
    [
        (float("nan"), 1.0, {}, "figure is nan"),
        (1.0, 0.0, {}, "reference_figure is 0"),
        (1.0, 1.0, "batch 4", "config is str"),
    ],
)
def test_report_refuses_bad_values(capsys, figure, reference_figure, config, match):
    report = load_report()
    with pytest.raises(ValueError, match=match):
        report.report("toy", "cpu", config, figure, "s", "ref", reference_figure)
    assert capsys.readouterr().out == ""


def test_eer_speed_quick_ends_with_the_json_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "eer_speed.py"), "--quick"],
        cwd=BENCHMARKS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    record = json.loads(lines[0])
    assert tuple(record) == load_report().FIELDS
    assert record["name"] == "eer_speed"
    assert record["config"]["trials"] == 100_000
    assert record["figure"] > 0 and record["reference_figure"] > 0
    assert record["ratio"] == pytest.approx(record["figure"] / record["reference_figure"], rel=1e-3)
    assert "evaluate_scores" in result.stderr  # the human-readable table goes to stderr


def test_sv_train_step_quick_reports_the_trainers_data_wait(shared_data):
    """The GPU benchmark of the loader-wait goal, run small on the CPU so that it cannot rot
    while no GPU is at hand: both paths train and the JSON line carries their data_wait."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPEECHKIT_SHARED_DATA": str(shared_data)}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sv_train_step.py"), "--quick", "--device", "cpu"],
        cwd=BENCHMARKS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    record = json.loads(lines[0])
    assert record["name"] == "sv_train_step"
    waits = record["config"]["data_wait"]
    assert set(waits) == {"worker", "bank"}
    assert all(0.0 <= w <= 1.0 for w in waits.values())
    assert record["figure"] == pytest.approx(waits["bank"], abs=1e-4)  # both rounded
    assert all(s > 0 for s in record["config"]["s_per_update"].values())
