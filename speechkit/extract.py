"""``python -m speechkit.extract ...``: the ``speechkit-extract`` command (``speechkit.cli.extract``)."""

import sys

from speechkit.cli.extract import main

if __name__ == "__main__":
    sys.exit(main())
