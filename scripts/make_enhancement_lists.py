"""Runs ``speechkit-make-enhancement-lists`` (``speechkit.cli.make_enhancement_lists.main``)."""

import sys

from speechkit.cli.make_enhancement_lists import main

if __name__ == "__main__":
    sys.exit(main())
