"""Dataset generators for Sophia: ``python datasets/make.py TASK --out DIR``.

The tasks live in :mod:`datasets.tasks`; :mod:`datasets.make` is the
command line on top of them.
"""
