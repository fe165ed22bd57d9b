"""The cell kernels' machine-code cache (sophia/graph/engines/native.py): a later process loads
the kernels from disk without compiling them, and they compute what Numba's kernels do."""
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from sophia.graph.engines import kernels, kernels_bn, native

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")

BATCH, WIDTH = 3, 5
GATES = native.GATES
# the option kernels run with every option their unit has
FLAGS = {"lstm_options_cell": kernels.PEEPHOLE | kernels.LAYER_NORM | kernels.CLOCK,
         "gru_options_cell": kernels.LAYER_NORM | kernels.CLOCK,
         "lstm_bn_cell": kernels.PEEPHOLE | kernels.CLOCK, "gru_bn_cell": kernels.CLOCK}
FLAGS.update({f"{name}_grad": flags for name, flags in FLAGS.items()})


def kernel_arrays(name, dtype, seed=0):
    """Random inputs for kernel ``name``: values in (0, 1) (gate activations where the
    kernel reads activations), the gradient accumulators in float64."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.05, 0.95, shape).astype(np.float64 if wide else dtype)
            for shape, wide in native.array_shapes(name, BATCH, WIDTH)]


def run_native(name, dtype, arrays):
    """Call the native kernel on copies of ``arrays``; returns the copies (written in place)."""
    out = [a.copy() for a in arrays]
    native.kernel(name, dtype, FLAGS.get(name, 0))(*[a.ctypes.data for a in out], BATCH, WIDTH, float(np.dtype(dtype).type(1)))
    return out


def run_numba(name, dtype, arrays):
    out = [a.copy() for a in arrays]
    flags = (FLAGS[name],) if name in FLAGS else ()
    kernel = getattr(kernels, name, None) or getattr(kernels_bn, name)
    kernel(*out, np.dtype(dtype).type(1), *flags)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(GATES))
def test_native_kernels_compute_what_numba_kernels_do(name, dtype, tmp_path, monkeypatch):
    monkeypatch.setattr(native, "cache_dir", lambda: str(tmp_path))
    native.kernel.cache_clear()
    arrays = kernel_arrays(name, dtype)
    for got, want in zip(run_native(name, dtype, arrays), run_numba(name, dtype, arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".o")]) == 1
    native.kernel.cache_clear()


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from sophia.graph.engines import native
    from tests.test_native import GATES, kernel_arrays, run_native
    if sys.argv[2] == "forbid-compiling":
        def refuse(*args):
            raise RuntimeError("compiled although the cache holds the kernel")
        native._compile = refuse
    out = {}
    for name in GATES:
        for k, a in enumerate(run_native(name, "float32", kernel_arrays(name, "float32"))):
            out[f"{name}.{k}"] = a
    np.savez(sys.argv[1], **out)
""")


def test_a_later_process_loads_the_kernels_without_compiling(tmp_path):
    """The first process compiles and stores every kernel; the second, where compiling
    raises, loads them all from the cache and computes the same numbers."""
    env = dict(os.environ, PYTENSOR_FLAGS=f"compiledir={tmp_path / 'compiledir'}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = []
    for run, how in enumerate(["compile", "forbid-compiling"]):
        path = tmp_path / f"run{run}.npz"
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), how], env=env, cwd=root,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(dict(np.load(path)))
    assert len([f for f in os.listdir(tmp_path / "compiledir" / "sophia_kernels") if f.endswith(".o")]) == len(GATES)
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_a_damaged_cache_file_is_compiled_again(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "cache_dir", lambda: str(tmp_path))
    native.kernel.cache_clear()
    arrays = kernel_arrays("gru_cell", "float32")
    want = run_native("gru_cell", "float32", arrays)
    (path,) = tmp_path.glob("*.o")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                     # one flipped byte in the machine code
    path.write_bytes(bytes(data[:-100]))             # and a truncated file
    assert native._read(str(path)) is None
    native.kernel.cache_clear()
    for got, expected in zip(run_native("gru_cell", "float32", arrays), want):
        np.testing.assert_array_equal(got, expected)
    assert native._read(str(path)) is not None       # stored again, whole
    native.kernel.cache_clear()


def test_code_that_cannot_be_loaded_runs_as_numba_compiled_it(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(native, "_load", lambda code, symbol: (_ for _ in ()).throw(OSError("no JIT linker")))
    native.kernel.cache_clear()
    arrays = kernel_arrays("lstm_cell", "float32")
    with pytest.warns(RuntimeWarning, match="sophia_lstm_cell_float32 runs as Numba compiled it.*no JIT linker"):
        got = run_native("lstm_cell", "float32", arrays)
    for got, want in zip(got, run_numba("lstm_cell", "float32", arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    native.kernel.cache_clear()


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path, monkeypatch):
    """A compiledir that cannot hold the kernels (here: a file where the folder should
    be) leaves the kernel working and no temporary file behind."""
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setattr(native, "cache_dir", lambda: str(tmp_path / "not_a_folder" / "sophia_kernels"))
    native.kernel.cache_clear()
    arrays = kernel_arrays("lstm_cell_grad", "float32")
    for got, want in zip(run_native("lstm_cell_grad", "float32", arrays),
                         run_numba("lstm_cell_grad", "float32", arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert [p.name for p in tmp_path.iterdir()] == ["not_a_folder"]
    native.kernel.cache_clear()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache, no kernels handed to helpers yet, two cores."""
    monkeypatch.setattr(native, "cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(native, "_PREFETCHED", set())
    monkeypatch.setattr(native, "_HELPERS", [])
    monkeypatch.setattr(native, "_cores", lambda: 2)
    native.kernel.cache_clear()
    yield tmp_path
    native.kernel.cache_clear()


def refuse_to_compile(monkeypatch):
    def refuse(*args):
        raise RuntimeError("compiled although a helper stored the kernel")
    monkeypatch.setattr(native, "_compile", refuse)


NORM = [("layer_norm_rows", 0), ("layer_norm_rows_grad", 0)]
NORM_ARGS = ["layer_norm_rows:0", "layer_norm_rows_grad:0"]     # as the helper is told


def test_prefetch_stores_the_missing_kernels_from_a_helper_process(fresh_cache, monkeypatch):
    native.prefetch(NORM, "float32")
    (helper,) = native._HELPERS
    assert helper.args[-2:] == NORM_ARGS
    assert helper.wait(timeout=300) == 0
    assert len(list(fresh_cache.glob("*.o"))) == 2
    native.prefetch(NORM, "float32")                  # all cached: no second helper
    assert len(native._HELPERS) == 1
    refuse_to_compile(monkeypatch)
    for name, _ in NORM:
        arrays = kernel_arrays(name, "float32")
        for got, want in zip(run_native(name, "float32", arrays), run_numba(name, "float32", arrays)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_prefetch_starts_nothing_for_one_kernel_or_one_core(fresh_cache, monkeypatch):
    native.prefetch(NORM[:1], "float32")
    monkeypatch.setattr(native, "_cores", lambda: 1)
    native.prefetch(NORM, "float32")
    assert native._HELPERS == []


def test_a_kernel_compiling_in_another_process_is_waited_for_then_loaded(fresh_cache, tmp_path_factory,
                                                                        monkeypatch):
    """While another process holds a kernel's lock, kernel() waits and loads what that
    process stores instead of compiling it again; a helper skips a locked kernel."""
    elsewhere = str(tmp_path_factory.mktemp("elsewhere"))
    native.compile_into(elsewhere, "float32", "layer_norm_rows:0")
    (stored,) = [os.path.join(elsewhere, f) for f in os.listdir(elsewhere) if f.endswith(".o")]
    path = os.path.join(str(fresh_cache), os.path.basename(stored))
    held, release = threading.Event(), threading.Event()

    def other_process():                              # flock: another open file conflicts, as another process would
        with native._locked(path):
            held.set()
            release.wait(30)
            shutil.copy(stored, path)

    other = threading.Thread(target=other_process)
    other.start()
    held.wait(30)
    native.compile_into(str(fresh_cache), "float32", "layer_norm_rows:0")
    assert not os.path.exists(path)                   # the helper left the locked kernel alone
    refuse_to_compile(monkeypatch)
    threading.Timer(0.3, release.set).start()
    arrays = kernel_arrays("layer_norm_rows", "float32")
    got = run_native("layer_norm_rows", "float32", arrays)
    other.join()
    for got, want in zip(got, run_numba("layer_norm_rows", "float32", arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_compiling_a_function_prefetches_its_kernels_forward_ones_first(fresh_cache):
    import pytensor as th
    import pytensor.tensor as tt
    from sophia.graph.engines.fused_norm import layer_norm
    from sophia.graph.modes import compile_mode

    x, gamma, beta = tt.matrix("x"), tt.vector("gamma"), tt.vector("beta")
    y = layer_norm(x, gamma, beta)
    th.function([x, gamma, beta], [y, th.grad((y ** 2).sum(), gamma)], mode=compile_mode("auto"))
    (helper,) = native._HELPERS
    assert helper.args[-2:] == NORM_ARGS
    assert helper.wait(timeout=300) == 0


def test_an_option_kernel_is_compiled_and_cached_per_set_of_option_bits(fresh_cache):
    """Each set of option bits is its own kernel (its own cache file), computing what the
    Numba kernel computes with those bits; a kernel without options refuses bits."""
    name = "gru_options_cell"
    for flags in (kernels.LAYER_NORM, kernels.CLOCK):
        arrays = kernel_arrays(name, "float64")
        got = [a.copy() for a in arrays]
        native.kernel(name, "float64", flags)(*[a.ctypes.data for a in got], BATCH, WIDTH, 1.0)
        want = [a.copy() for a in arrays]
        kernels.gru_options_cell(*want, 1.0, flags)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    stored = sorted(f.name.split("-")[0] for f in fresh_cache.glob("*.o"))
    assert stored == [f"sophia_{name}_float64_options{kernels.LAYER_NORM}", f"sophia_{name}_float64_options{kernels.CLOCK}"]
    with pytest.raises(ValueError, match="lstm_cell takes no option bits"):
        native.kernel("lstm_cell", "float32", kernels.CLOCK)
