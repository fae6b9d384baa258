"""``speechkit-train``: train with Hydra overrides (``speechkit.train``; also
``python -m speechkit.train``). ``speechkit-train --help`` lists the config groups and names."""

from __future__ import annotations

from speechkit import preemption


def main() -> None:
    """Run ``speechkit.train.cli_main``, with the pre-emption handlers installed before torch
    and Hydra are imported (a SIGUSR1/SIGTERM during start-up ends the job with status 75)."""
    preemption.install()
    preemption.install_exit_hook()
    from speechkit.train import cli_main

    cli_main()


if __name__ == "__main__":
    main()
