"""Runs ``speechkit-combine-embeddings`` (``speechkit.cli.combine_embeddings.main``)."""

import sys

from speechkit.cli.combine_embeddings import main

if __name__ == "__main__":
    sys.exit(main())
