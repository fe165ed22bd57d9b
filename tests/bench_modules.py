"""Load a script of ``bench/`` as a module, for the tests of its pure functions."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name):
    """The module of ``bench/<name>.py``, loaded under the name ``bench_<name>``
    (``bench/`` is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
