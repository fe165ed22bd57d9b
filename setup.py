"""Install Sophia: the package, its console scripts and its optional extras."""
from setuptools import find_packages, setup

setup(
    name="sophia-rnn",
    version="0.3.0",
    description="Real-time recurrent networks for regression on long, noisy streams, "
                "trained with BPTT(h; h') and served over ZeroMQ.",
    packages=find_packages(include=["sophia", "sophia.*"]),
    package_data={"sophia.training": ["demo.toml"],        # train.py --demo's option overrides
                  "sophia.graph.engines": ["cells.c"]},    # the cell kernels, compiled on first use
    python_requires=">=3.11",
    install_requires=["pytensor>=2.30", "numpy>=1.26", "pyzmq>=25",
                      # BLAS at one thread per block while the fused windows' row blocks run
                      # side by side (sophia/graph/engines/blocks.py)
                      "threadpoolctl>=3.1",
                      # oneDNN's LSTM for training steps (sophia/graph/engines/onednn.py); elsewhere the fused Ops
                      "onednn-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5",  # the suite runs on every core (pytest.ini)
                 "matplotlib>=3.7",                     # tests check the learning-curve PNG
                 "jax>=0.4.30",                         # and the JAX compile mode
                 "statsmodels>=0.14"],                  # and the ETS/ARIMA baselines, real series
        "jax": ["jax>=0.4.30"],                         # compile_mode JAX (CPU; GPUs with jax[cuda12])
        "plot": ["matplotlib>=3.7"],
        "data": ["statsmodels>=0.14",    # the real task's bundled series; sophia-eval's ets, arima
                 "pmdarima>=2.0"],       # the real task's taylor and msft series
        "bench": ["torch==2.13.0"],     # the PyTorch bench/ compares against (bench/README.md)
    },
    entry_points={
        "console_scripts": [
            "sophia-train=sophia.training.cli:main",
            "sophia-serve=sophia.serving.cli:main",
            "sophia-data=sophia.data.cli:main",
            "sophia-eval=sophia.evaluation.cli:main",
            "sophia-generate=sophia.serving.generate:main",
        ],
    },
)
