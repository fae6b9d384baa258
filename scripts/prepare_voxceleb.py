"""Runs ``speechkit-prepare-voxceleb`` (``speechkit.cli.prepare_voxceleb.main``)."""

import sys

from speechkit.cli.prepare_voxceleb import main

if __name__ == "__main__":
    sys.exit(main())
