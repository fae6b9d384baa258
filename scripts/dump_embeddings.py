"""Runs ``speechkit-dump-embeddings`` (``speechkit.cli.dump_embeddings.main``)."""

import sys

from speechkit.cli.dump_embeddings import main

if __name__ == "__main__":
    sys.exit(main())
