"""`python -m maejax.probe ...`: see maejax/cli/probe.py."""

import sys

from maejax.cli import probe

if __name__ == "__main__":
  sys.exit(probe.main())
