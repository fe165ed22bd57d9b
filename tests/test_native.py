"""The cell kernels' compiled libraries (sophia/graph/engines/native.py): compiled once per
machine, dtype and option bits, cached on disk, loaded by later processes without compiling.
What the kernels compute is checked through the fused Ops against scan (tests/test_engines.py,
tests/test_fused*.py)."""
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from sophia.graph.engines import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler")

BATCH, WIDTH = 3, 5
GATES = native.GATES
# the option kernels run with every option their unit has
FLAGS = {"lstm_options_cell": native.PEEPHOLE | native.LAYER_NORM | native.CLOCK,
         "gru_options_cell": native.LAYER_NORM | native.CLOCK,
         "lstm_bn_cell": native.PEEPHOLE | native.CLOCK, "gru_bn_cell": native.CLOCK}
FLAGS.update({f"{name}_grad": flags for name, flags in FLAGS.items()})
FAMILIES = sorted({native.family(name) for name in GATES})


def kernel_arrays(name, dtype, seed=0):
    """Random inputs for kernel ``name``: values in (0, 1) (gate activations where the
    kernel reads activations), the gradient accumulators in float64."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.05, 0.95, shape).astype(np.float64 if wide else dtype)
            for shape, wide in native.array_shapes(name, BATCH, WIDTH)]


def run_native(name, dtype, arrays, flags=None):
    """Call the native kernel on copies of ``arrays``; returns the copies (written in place)."""
    out = [a.copy() for a in arrays]
    flags = FLAGS.get(name, 0) if flags is None else flags
    native.kernel(name, dtype, flags)(*[a.ctypes.data for a in out], BATCH, WIDTH, float(np.dtype(dtype).type(1)))
    return out


def forget_loaded():
    native.kernel.cache_clear()
    native._library.cache_clear()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache, no compiles pending."""
    monkeypatch.setattr(native, "cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(native, "_PENDING", {})
    forget_loaded()
    yield tmp_path
    forget_loaded()


def libraries(folder):
    return sorted(f.name.split("-")[0] for f in folder.glob("*.so"))


def refuse_to_compile(monkeypatch):
    def refuse(*args):
        raise RuntimeError("compiled although the cache holds the library")
    monkeypatch.setattr(native, "_compile_and_open", refuse)


def test_float32_kernels_compute_what_float64_ones_do(fresh_cache):
    """Every kernel in both precisions, from one library per family (kernel and gradient):
    float32's rational tanh and its sums agree with float64's libm within float32's precision."""
    for name in GATES:
        arrays = kernel_arrays(name, "float64")
        want = run_native(name, "float64", arrays)
        got = run_native(name, "float32", [a if wide else a.astype(np.float32)
                                           for a, (_, wide) in zip(arrays, native.array_shapes(name, BATCH, WIDTH))])
        for k, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=f"{name} array {k}")
    assert len(libraries(fresh_cache)) == 2 * len(FAMILIES)      # float32 and float64


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from sophia.graph.engines import native
    from tests.test_native import GATES, kernel_arrays, run_native
    if sys.argv[2] == "forbid-compiling":
        def refuse(*args):
            raise RuntimeError("compiled although the cache holds the library")
        native._compile_and_open = refuse
    out = {}
    for name in GATES:
        for k, a in enumerate(run_native(name, "float32", kernel_arrays(name, "float32"))):
            out[f"{name}.{k}"] = a
    np.savez(sys.argv[1], **out)
""")


def test_a_later_process_loads_the_kernels_without_compiling(tmp_path):
    """The first process compiles and stores every library; the second, where compiling
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
    assert len(libraries(tmp_path / "compiledir" / "sophia_kernels")) == len(FAMILIES)
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_a_damaged_cache_file_is_compiled_again(fresh_cache):
    """A truncated library (as a crash while writing without the rename would leave) or
    one with a flipped byte is never loaded: kernel() compiles it again."""
    path = native._path("gru_cell", np.dtype("float32"), 0, str(fresh_cache))
    for damage in (lambda data: data[:-2000], lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]):
        native._compile("gru_cell", np.dtype("float32"), 0, path)
        with open(path, "rb") as f:
            whole = f.read()
        with open(path, "wb") as f:
            f.write(damage(whole))
        assert native._open(path, "gru_cell") is None
        forget_loaded()
        run_native("gru_cell", "float32", kernel_arrays("gru_cell", "float32"))
        with open(path, "rb") as f:
            assert len(f.read()) == len(whole)     # stored again, whole


def test_a_compiler_error_names_the_kernels_and_shows_the_message(fresh_cache, monkeypatch):
    monkeypatch.setattr(native, "CFLAGS", native.CFLAGS + ("-include", "/nonexistent/oops.h"))
    with pytest.raises(RuntimeError, match=r"could not compile the cell kernels lstm_cell \(float32.*\n.*oops"):
        native.kernel("lstm_cell", "float32")
    assert list(fresh_cache.glob("*.so*tmp")) == []


def test_cc_may_hold_a_command_with_arguments(fresh_cache, monkeypatch):
    """``$CC`` as a shell would split it: here the compiler and a flag of its own."""
    monkeypatch.setenv("CC", f"{shutil.which('cc') or shutil.which('gcc')} -DSOPHIA_UNUSED=1")
    native._compiler.cache_clear()
    try:
        assert native._compiler()[1:] == ("-DSOPHIA_UNUSED=1",)
        got = run_native("clock_openness", "float32", kernel_arrays("clock_openness", "float32"))
        assert np.all((got[5] >= 0) & (got[5] <= 1))            # the openness k, in [0, 1]
    finally:
        native._compiler.cache_clear()


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path, monkeypatch):
    """A compiledir that cannot hold the libraries (here: a file where the folder should
    be) leaves the kernel working and no file behind."""
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setattr(native, "cache_dir", lambda: str(tmp_path / "not_a_folder" / "sophia_kernels"))
    forget_loaded()
    arrays = kernel_arrays("lstm_cell_grad", "float32")
    got = run_native("lstm_cell_grad", "float32", arrays)
    assert not np.allclose(got[7], arrays[7])                    # d was written
    assert [p.name for p in tmp_path.iterdir()] == ["not_a_folder"]
    forget_loaded()


NORM = [("layer_norm_rows", 0), ("layer_norm_rows_grad", 0), ("clock_openness", 0)]


def test_prefetch_compiles_the_missing_libraries_in_threads(fresh_cache, monkeypatch):
    native.prefetch(NORM, "float32")
    assert len(native._PENDING) == 2                 # one library per family
    for future in native._PENDING.values():
        future.result(timeout=300)
    assert libraries(fresh_cache) == ["sophia_clock_openness_float32_options0",
                                      "sophia_layer_norm_rows_float32_options0"]
    native.prefetch(NORM, "float32")                  # all pending or cached: nothing new
    assert len(native._PENDING) == 2
    refuse_to_compile(monkeypatch)
    for name, _ in NORM:
        run_native(name, "float32", kernel_arrays(name, "float32"))


def test_a_library_compiling_in_another_process_is_waited_for_then_loaded(fresh_cache, tmp_path_factory,
                                                                         monkeypatch):
    """While another process holds a library's lock, kernel() waits and loads what that
    process stores instead of compiling it again; a prefetch thread skips a locked library."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = native._path("layer_norm_rows", np.dtype("float32"), 0, str(fresh_cache))
    stored = native._path("layer_norm_rows", np.dtype("float32"), 0, str(elsewhere))
    native._compile("layer_norm_rows", np.dtype("float32"), 0, stored)
    held, release = threading.Event(), threading.Event()

    def other_process():                              # flock: another open file conflicts, as another process would
        with native._locked(path):
            held.set()
            release.wait(30)
            shutil.copy(stored + ".sha256", path + ".sha256")
            shutil.copy(stored, path)

    other = threading.Thread(target=other_process)
    other.start()
    held.wait(30)
    native._compile_quietly("layer_norm_rows", np.dtype("float32"), 0, path)
    assert not os.path.exists(path)                   # the prefetch left the locked library alone
    refuse_to_compile(monkeypatch)
    threading.Timer(0.3, release.set).start()
    arrays = kernel_arrays("layer_norm_rows", "float32")
    got = run_native("layer_norm_rows", "float32", arrays)
    other.join()
    np.testing.assert_allclose(got[3].mean(axis=1), 0.0, atol=1e-5)      # n = (x − mean) / sd ...
    np.testing.assert_allclose(got[3].std(axis=1), 1.0, rtol=1e-3)


def test_compiling_a_function_prefetches_its_kernels(fresh_cache):
    import pytensor as th
    import pytensor.tensor as tt
    from sophia.graph.engines.fused_norm import layer_norm
    from sophia.graph.modes import compile_mode

    x, gamma, beta = tt.matrix("x"), tt.vector("gamma"), tt.vector("beta")
    y = layer_norm(x, gamma, beta)
    th.function([x, gamma, beta], [y, th.grad((y ** 2).sum(), gamma)], mode=compile_mode("auto"))
    assert [os.path.basename(p).split("-")[0] for p in native._PENDING] == [
        f"sophia_layer_norm_rows_{th.config.floatX}_options0"]
    for future in native._PENDING.values():
        future.result(timeout=300)


def test_an_option_kernel_is_compiled_and_cached_per_set_of_option_bits(fresh_cache):
    """Each set of option bits is its own library, computing its own options; a kernel
    without options refuses bits."""
    name = "gru_options_cell"
    arrays = kernel_arrays(name, "float64")
    norm, clock = (run_native(name, "float64", arrays, flags) for flags in (native.LAYER_NORM, native.CLOCK))
    assert np.array_equal(norm[12], arrays[12]) and not np.array_equal(clock[12], arrays[12])  # the clock's blend into h
    assert not np.array_equal(norm[0], arrays[0]) and np.array_equal(clock[0], arrays[0])  # layer norm of ha, in place
    assert libraries(fresh_cache) == [f"sophia_{name}_float64_options{native.LAYER_NORM}",
                                      f"sophia_{name}_float64_options{native.CLOCK}"]
    with pytest.raises(ValueError, match="lstm_cell takes no option bits"):
        native.kernel("lstm_cell", "float32", native.CLOCK)
