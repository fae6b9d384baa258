"""Runs ``speechkit-eval-eer`` (``speechkit.cli.eval_eer.main``)."""

import sys

from speechkit.cli.eval_eer import main

if __name__ == "__main__":
    sys.exit(main())
