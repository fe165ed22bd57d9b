"""keep_freed_memory: a freed large block comes back without new page faults."""
import subprocess
import sys

import pytest

PROBE = """
import resource, numpy as np
from sophia.training.memory import keep_freed_memory

def faults_of_a_fresh_64mib_block():
    block = np.empty(64 << 20, np.uint8)
    block.fill(1)
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.empty(64 << 20, np.uint8)
    block.fill(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults_of_a_fresh_64mib_block()
applied = keep_freed_memory()
print(applied, plain, faults_of_a_fresh_64mib_block())
"""


def test_freed_large_blocks_are_reused_without_faulting():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    applied, plain, kept = out.stdout.split()
    if applied != "True":
        pytest.skip("not glibc: keep_freed_memory does nothing here")
    assert int(plain) >= 16, f"a fresh 64 MiB block should fault its pages in (saw {plain})"
    assert int(kept) < int(plain) / 4, (plain, kept)
