"""Runs ``speechkit-convert-voxceleb-trainer`` (``speechkit.cli.convert_voxceleb_trainer.main``)."""

import sys

from speechkit.cli.convert_voxceleb_trainer import main

if __name__ == "__main__":
    sys.exit(main())
