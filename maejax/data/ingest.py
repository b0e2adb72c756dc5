"""`python -m maejax.data.ingest ...`: see maejax/cli/ingest.py."""
import sys
from maejax.cli import ingest
if __name__ == "__main__":
  sys.exit(ingest.main())
