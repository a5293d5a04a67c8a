"""``python -m pipelines`` works like the ``evflow`` command."""

import sys

from pipelines._cli import main

if __name__ == "__main__":
    sys.exit(main())
