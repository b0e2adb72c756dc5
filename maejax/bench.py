"""`python -m maejax.bench {model,data,train} ...`: see maejax/cli/bench.py."""
import sys
from maejax.cli import bench
if __name__ == "__main__":
  sys.exit(bench.main())
