"""`python -m maejax.convert ...`: see maejax/cli/convert.py."""
import sys
from maejax.cli import convert
if __name__ == "__main__":
  sys.exit(convert.main())
