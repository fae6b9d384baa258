"""Runs ``speechkit-make-spk2info`` (``speechkit.cli.make_spk2info.main``)."""

import sys

from speechkit.cli.make_spk2info import main

if __name__ == "__main__":
    sys.exit(main())
