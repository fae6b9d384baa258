"""Runs ``speechkit-dump-lip-features`` (``speechkit.cli.dump_lip_features.main``)."""

import sys

from speechkit.cli.dump_lip_features import main

if __name__ == "__main__":
    sys.exit(main())
