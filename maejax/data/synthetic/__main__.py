"""`python -m maejax.data.synthetic ...`: see maejax/cli/synthetic.py."""
import sys
from maejax.cli import synthetic
if __name__ == "__main__":
  sys.exit(synthetic.main())
