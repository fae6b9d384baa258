"""Runs ``speechkit-make-sv-shared-lists`` (``speechkit.cli.make_sv_shared_lists.main``)."""

import sys

from speechkit.cli.make_sv_shared_lists import main

if __name__ == "__main__":
    sys.exit(main())
