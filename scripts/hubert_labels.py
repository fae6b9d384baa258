"""Runs ``speechkit-hubert-labels`` (``speechkit.cli.hubert_labels.main``)."""

import sys

from speechkit.cli.hubert_labels import main

if __name__ == "__main__":
    sys.exit(main())
