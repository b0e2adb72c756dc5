"""`python -m maejax.benchmark ...`: see maejax/cli/benchmark.py."""

import sys

from maejax.cli import benchmark

if __name__ == "__main__":
  sys.exit(benchmark.main())
