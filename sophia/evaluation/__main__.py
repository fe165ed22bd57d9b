"""``python -m sophia.evaluation ...``: the ``sophia-eval`` command (:mod:`sophia.evaluation.cli`)."""
import sys

from sophia.evaluation.cli import main

sys.exit(main())
