"""Runs ``speechkit-prepare-contentvec-demo`` (``speechkit.cli.prepare_contentvec_demo.main``)."""

import sys

from speechkit.cli.prepare_contentvec_demo import main

if __name__ == "__main__":
    sys.exit(main())
