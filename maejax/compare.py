"""`python -m maejax.compare --configs A.py,B.py --out DIR`: see maejax/eval/compare.py."""

import sys

from maejax.eval.compare import main

if __name__ == "__main__":
  sys.exit(main())
