"""`python -m maejax.compare ...`: see maejax/cli/compare.py."""

import sys

from maejax.cli import compare

if __name__ == "__main__":
  sys.exit(compare.main())
