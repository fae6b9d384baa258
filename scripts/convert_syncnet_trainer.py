"""Runs ``speechkit-convert-syncnet-trainer`` (``speechkit.cli.convert_syncnet_trainer.main``)."""

import sys

from speechkit.cli.convert_syncnet_trainer import main

if __name__ == "__main__":
    sys.exit(main())
