"""`python -m maejax.embed --checkpoint DIR --out embeddings.parquet`: see maejax/eval/embed.py."""

import sys

from maejax.eval.embed import main

if __name__ == "__main__":
  sys.exit(main())
