"""Initialisers: small callables ``init(shape, rng) -> ndarray``.

- :class:`Uniform`    — U(−scale, scale).
- :class:`Glorot`     — U(±sqrt(6 / (fan_in + fan_out))) (Glorot & Bengio 2010).
- :class:`Orthogonal` — a random orthogonal matrix (Saxe et al. 2014); square only.
- :class:`Sparse`     — a few non-zero incoming weights per unit (Martens 2010).
- :class:`SpectralRadius` — another initialiser's square matrix, rescaled to a spectral radius.
- :class:`Constant`   — every element the same value.
- :func:`stacked`     — one matrix of gate blocks side by side, each block from an init.
- :func:`fixed_shared` — a parameter's shared variable, its shape static in every graph.

Values come back as float64; the caller casts them to the graph's dtype.

Example
-------
>>> import numpy as np
>>> w = stacked(Orthogonal(), rows=3, block=3, blocks=4, rng=np.random.default_rng(0))
>>> w.shape, np.allclose(w[:, :3] @ w[:, :3].T, np.eye(3))
((3, 12), True)
"""
from __future__ import annotations

import numpy as np
import pytensor as th


class Uniform:
    """U(−scale, scale) for every element."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, shape, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-self.scale, self.scale, size=shape)


class Glorot:
    """Glorot/Xavier uniform for a matrix of shape [fan_in][fan_out]."""

    def __call__(self, shape, rng: np.random.Generator) -> np.ndarray:
        limit = np.sqrt(6.0 / (shape[0] + shape[-1]))
        return rng.uniform(-limit, limit, size=shape)


class Orthogonal:
    """A random orthogonal square matrix (QR of a Gaussian matrix, signs fixed)."""

    def __call__(self, shape, rng: np.random.Generator) -> np.ndarray:
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"Orthogonal needs a square matrix, got shape {shape}")
        q, r = np.linalg.qr(rng.standard_normal(shape))
        return q * np.sign(np.diag(r))


class Sparse:
    """Each unit (column) gets ``connections`` non-zero incoming weights from
    N(0, scale²) at distinct random rows; the rest are zero ("sparse initialisation",
    Martens 2010 §5, which Martens & Sutskever 2011 use for their RNNs). With fewer
    rows than ``connections`` every weight is non-zero."""

    def __init__(self, connections: int, scale: float):
        self.connections, self.scale = connections, scale

    def __call__(self, shape, rng: np.random.Generator) -> np.ndarray:
        rows, cols = shape[0], int(np.prod(shape[1:]))
        w = np.zeros((rows, cols))
        k = min(self.connections, rows)
        for col in range(cols):
            w[rng.choice(rows, size=k, replace=False), col] = rng.normal(0.0, self.scale, size=k)
        return w.reshape(shape)


class SpectralRadius:
    """``init``'s square matrix rescaled so that its largest |eigenvalue| is ``radius``
    (a matrix of zeros stays zero)."""

    def __init__(self, init, radius: float):
        self.init, self.radius = init, radius

    def __call__(self, shape, rng: np.random.Generator) -> np.ndarray:
        w = self.init(shape, rng)
        current = np.max(np.abs(np.linalg.eigvals(w)))
        return w * (self.radius / current) if current > 0 else w


class Constant:
    """Every element equal to ``value``."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, shape, rng: np.random.Generator) -> np.ndarray:
        return np.full(shape, self.value, dtype=np.float64)


def stacked(init, rows: int, block: int, blocks: int, rng: np.random.Generator) -> np.ndarray:
    """A [rows][blocks·block] matrix made of ``blocks`` independent [rows][block] blocks."""
    return np.concatenate([init((rows, block), rng) for _ in range(blocks)], axis=1)


def fixed_shared(value: np.ndarray, name: str):
    """A shared variable for ``value`` whose shape is part of its type.

    Graphs then know every parameter's shape as constants, so no shape is computed at
    run time: the JAX backend needs that (it traces with concrete shapes only), and
    the other backends fold the shape arithmetic away. Setting a value of another
    shape raises TypeError.
    """
    return th.shared(value, name=name, shape=value.shape)


def matrix_init(options, recurrent: bool, square: bool):
    """The initialiser ModelOptions ask for: orthogonal for square recurrent blocks
    (when ``orthogonal_recurrent``), else uniform(±init_scale), Glorot or sparse;
    square recurrent blocks rescaled to ``recurrent_spectral_radius`` where it is > 0."""
    if recurrent and square and options.orthogonal_recurrent:
        init = Orthogonal()
    elif options.init_type == "glorot":
        init = Glorot()
    elif options.init_type == "sparse":
        init = Sparse(options.sparse_connections, options.init_scale)
    else:
        init = Uniform(options.init_scale)
    if recurrent and square and options.recurrent_spectral_radius > 0:
        init = SpectralRadius(init, options.recurrent_spectral_radius)
    return init
