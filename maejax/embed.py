"""`python -m maejax.embed ...`: see maejax/cli/embed.py."""

import sys

from maejax.cli import embed

if __name__ == "__main__":
  sys.exit(embed.main())
