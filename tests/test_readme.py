"""README.md's commands and code blocks, run verbatim in a copy of the checkout.

The copy's ``.venv`` is the environment running the tests, so command 1's set-up
(``python3 -m venv .venv && .venv/bin/pip install ...``) is already done; what
follows its last ``&&`` (the demo) runs as written, then every other block in
order: bash lines one by one (a line ending in ``&`` starts a background process
that must print its "serving on" line), Python blocks in a fresh interpreter.
Command 2 is the command running these tests: the test checks that ``.ci/run``
runs exactly it.
"""
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def readme_blocks():
    """``[(language, text), ...]`` of README.md's fenced blocks, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((REPO_ROOT / "README.md").read_text())]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    language, text = readme_blocks()[0]
    setup, tests = text.strip().splitlines()
    assert language == "bash" and "python3 -m venv .venv" in setup and "--demo" in setup
    ci_lines = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [tests]


def test_torch_pin_is_one_source():
    """The benchmarks' PyTorch comes from setup.py's bench extra, which the bench docs install."""
    setup = (REPO_ROOT / "setup.py").read_text()
    pin = re.search(r'"bench": \["(torch==[\w.+]+)"\]', setup)
    assert pin, "setup.py's bench extra pins torch"
    docs = "".join((REPO_ROOT / p).read_text() for p in ("README.md", "bench/README.md", "docs/MODES.md"))
    assert "'.[bench]'" in (REPO_ROOT / "bench" / "README.md").read_text()
    assert set(re.findall(r"torch==[\w.+]+", docs)) <= {pin.group(1)}


def checkout_copy(target: Path) -> Path:
    """The tracked files of the checkout (its working-tree versions) under ``target``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell which files a fresh clone has")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return target


def run_bash_line(line: str, cwd: Path, background: list):
    if line.endswith("&"):
        process = subprocess.Popen(shlex.split(line[:-1]), cwd=cwd, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        background.append(process)
        first = process.stdout.readline()
        assert "serving on" in first, f"{line}\n{first}{process.stderr.read() if process.poll() else ''}"
        return
    result = subprocess.run(line, shell=True, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.skipif(not (Path(sys.prefix) / "bin" / "sophia-data").exists(),
                    reason="the tests' environment has no sophia-data: install with pip install -e .")
def test_every_readme_block_runs_verbatim_after_command_1(tmp_path):
    cwd = checkout_copy(tmp_path / "clone")
    blocks = readme_blocks()
    demo = blocks[0][1].strip().splitlines()[0].split("&&")[-1].strip()
    background, outputs = [], []
    try:
        outputs.append(run_bash_line(demo, cwd, background))
        assert "demo: best dev loss" in outputs[-1]
        for language, text in blocks[1:]:
            if language == "bash":
                for line in filter(None, (raw.strip() for raw in text.splitlines())):
                    outputs.append(run_bash_line(line, cwd, background))
            elif language == "python":
                result = subprocess.run([sys.executable, "-c", text], cwd=cwd, capture_output=True,
                                        text=True, timeout=300)
                assert result.returncode == 0, f"{text}\n{result.stderr[-3000:]}"
                outputs.append(result.stdout)
            else:
                pytest.fail(f"README block of language {language!r}: the test cannot run it")
        assert background, "the README's serving example starts a server"
    finally:
        for process in background:
            process.send_signal(signal.SIGTERM)
            try:
                assert process.wait(timeout=15) == 0, process.stderr.read()
            finally:
                process.kill()
    estimate = re.search(r"target ([\d.]+), served estimate (-?[\d.]+)", "".join(o or "" for o in outputs))
    assert estimate and abs(float(estimate[1]) - float(estimate[2])) < 0.1   # the demo model has learned
