"""Serve trained Sophia models: ``python sophia.py --help``.

The logic lives in :mod:`sophia.serving.cli`; this script only calls it.
"""
import sys

from sophia.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
