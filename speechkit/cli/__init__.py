"""Command-line tools, one module per command, each with ``main(argv=None) -> int``.

Module ``speechkit.cli.<name>`` is the console command ``speechkit-<name, dashes for
underscores>`` (``[project.scripts]`` of ``pyproject.toml``; ``tests/test_console_commands.py``
keeps the two in step): ``speechkit-train`` (Hydra overrides), ``speechkit-extract``,
``speechkit-hubert-labels``, ``speechkit-eval-eer``, ``speechkit-dump-embeddings`` ... (argparse).
``paths`` is a helper, not a command. ``scripts/<name>.py``, ``python -m speechkit.train`` and
``python -m speechkit.extract`` run the same ``main``. Every command answers ``--help``.
"""
