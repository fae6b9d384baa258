"""Runs ``speechkit-make-syncnet-list`` (``speechkit.cli.make_syncnet_list.main``)."""

import sys

from speechkit.cli.make_syncnet_list import main

if __name__ == "__main__":
    sys.exit(main())
