"""Runs ``speechkit-eval-separation`` (``speechkit.cli.eval_separation.main``)."""

import sys

from speechkit.cli.eval_separation import main

if __name__ == "__main__":
    sys.exit(main())
