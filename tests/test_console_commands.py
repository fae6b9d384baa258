"""Console commands: one ``speechkit.cli`` module per command, each installed in the venv's
``bin/`` (``[project.scripts]``), answering ``--help``; ``scripts/*.py`` are thin wrappers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT, clean_env

BIN = Path(sys.executable).parent
NOT_COMMANDS = {"__init__", "paths"}  # speechkit/cli modules that are helpers


def project_scripts() -> dict[str, str]:
    """``{command: "module:function"}`` of pyproject.toml's ``[project.scripts]``."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, flags=re.M))


def test_every_cli_module_and_script_has_a_console_command():
    scripts = project_scripts()
    modules = {p.stem for p in (REPO_ROOT / "speechkit/cli").glob("*.py")} - NOT_COMMANDS
    assert {f"speechkit.cli.{m}:main" for m in modules} == set(scripts.values())
    for command, target in scripts.items():
        assert command == "speechkit-" + target.split(":")[0].rsplit(".", 1)[1].replace("_", "-")
    for script in (REPO_ROOT / "scripts").glob("*.py"):
        text = script.read_text()
        assert "sys.path" not in text, script
        assert f"from speechkit.cli.{script.stem} import main" in text, script
        assert script.stem in modules, script


# runs each installed bin/ script as __main__ with --help in ONE child process (torch is imported
# once instead of once per command); prints {command: [exit status, stdout]} as JSON
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
results = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results[path.rsplit("/", 1)[-1]] = [status, out.getvalue()]
print(json.dumps(results))
"""


def test_every_console_command_answers_help():
    commands = sorted(project_scripts())
    missing = [c for c in commands if not (BIN / c).is_file()]
    assert not missing, (
        f"not installed in {BIN}: {missing} (run .venv/bin/pip install --no-deps -e . or "
        "./setup.sh after editing pyproject.toml)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", HELP_DRIVER, *(str(BIN / c) for c in commands)],
        cwd=REPO_ROOT,
        env=dict(clean_env(), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(results) == commands
    for command, (status, out) in results.items():
        assert status == 0, f"{command} --help: status {status}\n{proc.stderr[-2000:]}"
        assert out.startswith("usage:"), f"{command} --help printed:\n{out[:500]}"
    assert "--spk-emb" in results["speechkit-extract"][1]
    assert "Config groups" in results["speechkit-train"][1]
    # and one installed executable run as the shell runs it
    direct = subprocess.run(
        [str(BIN / "speechkit-eval-eer"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert direct.returncode == 0 and direct.stdout.startswith("usage: speechkit-eval-eer")


def test_script_wrappers_and_module_runs_still_work():
    env = clean_env()
    for argv in (
        [sys.executable, "scripts/eval_eer.py", "--help"],
        [sys.executable, "-m", "speechkit.extract", "--help"],
    ):
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]
    assert "usage: python -m speechkit.extract" in proc.stdout
