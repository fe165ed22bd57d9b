"""``python -m sophia.data ...``: the ``sophia-data`` command (:mod:`sophia.data.cli`)."""
import sys

from sophia.data.cli import main

sys.exit(main())
