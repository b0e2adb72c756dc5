"""`python -m maejax.train ...`: see maejax/cli/train.py."""
import sys
from maejax.cli import train
if __name__ == "__main__":
  sys.exit(train.main())
