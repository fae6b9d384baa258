"""Runs ``speechkit-prepare-demo-data`` (``speechkit.cli.prepare_demo_data.main``)."""

import sys

from speechkit.cli.prepare_demo_data import main

if __name__ == "__main__":
    sys.exit(main())
