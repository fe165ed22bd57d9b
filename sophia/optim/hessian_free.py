"""Hessian-free optimisation (Martens 2010; Martens & Sutskever 2011) of a Net's window loss.

What is in it:

- :class:`HFSettings` — the method's constants, the papers' values as defaults (those of
  the ``hf_*`` training options; :meth:`HFSettings.from_options`).
- :func:`build_net_graph` → :class:`HFGraph` — the net's window graph on the scan
  engine (the fused and oneDNN engines have no second-order derivatives), with the
  hidden layers' outputs kept for structural damping; :func:`build_batch_graphs`, one
  with the gradient batch's static size and one with the curvature batch's.
- :func:`output_hessian_times` — H_L·r for the loss w.r.t. the output layer's
  pre-activations: ``l2`` on identity outputs, ``xent`` on softmax logits
  (:func:`softmax_hessian_times`), ``bce`` on sigmoid logits. Each is a matching loss
  (Schraudolph 2002): loss ∘ activation is convex in the pre-activations, so G is
  positive semi-definite, as Martens & Sutskever 2011 use softmax outputs.
- :func:`compile_functions` → :class:`HFFunctions` — ``f_cost``, ``f_grad`` and the
  Gauss–Newton–vector product ``f_gv(v_j, p_structural, *window)``
  = Jᵀ H_L J v + p_structural · J_hᵀ J_h v / n_frames, built as an L-op of H_L times
  an R-op, never forming a matrix.
- :func:`conjugate_gradient` (relative-progress stop, iterates kept at ceil(base^j)),
  :func:`backtrack`, :func:`armijo_line_search`, :func:`levenberg_marquardt` —
  pure numpy, tested on their own.
- :class:`HessianFree` — the driver: ``step(batch_for_gradient, batch_for_curvature)``
  updates the parameters (shared variables) in place and returns a :class:`StepReport`.

The objective is Sophia's loss per target frame, ``masked_loss`` sum / n_frames over
the window's last ``step_size`` frames, from zero initial states (HF evaluates the
same parameters on a batch many times, so no state is carried between windows).

Structural damping (Martens & Sutskever 2011 §3.2) penalises μ·λ·D(h) with
D = ½ Σ_{t,b,i} (h(θ+δ) − h(θ))² / n_frames over every hidden layer's output h and
every frame of the window: the squared distance (H_D = I), not the paper's
cross-entropy form for sigmoid units, because Sophia's units are tanh-like
(LSTM/GRU outputs). Dividing by n_frames scales it like the loss, as the released
HF-RNN code, which sums both over the batch, does.

Example
-------
>>> import numpy as np
>>> from sophia.options import ModelOptions
>>> from sophia.graph.net import Net
>>> net = Net(ModelOptions(input_dim=2, target_dim=1, net_width=3, net_depth=1), dtype="float64")
>>> graph = build_net_graph(net, step_size=4)
>>> hf = HessianFree(graph.params, compile_functions(graph, mode="FAST_COMPILE"),
...                  HFSettings(max_cg_iters=20))
>>> rng = np.random.default_rng(0)
>>> batch = (rng.standard_normal((4, 5, 2)), np.tile(np.arange(4.0)[:, None], (1, 5)),
...          np.zeros((4, 5), "int32"), rng.standard_normal((4, 5, 1)))
>>> report = hf.step(batch, curvature_slice(batch, 0.4))
>>> report.loss_after <= report.loss_before
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import pytensor as th
import pytensor.tensor as tt
from pytensor.gradient import disconnected_grad, pushforward
from pytensor.tensor.special import softmax

from sophia.optim.losses import masked_loss
from sophia.options import HF_LOSS_TYPES, OUTPUT_OF_LOSS, TrainOptions


def _default(name: str):
    """The default of the training option ``hf_<name>``: :mod:`sophia.options` is the one
    source of these constants (and says where each value comes from)."""
    return TrainOptions.__dataclass_fields__[f"hf_{name}"].default


@dataclass(frozen=True)
class HFSettings:
    """The constants of HF; the defaults (the papers' values, sources in the ``hf_*``
    options' help) are those of the training options ``hf_<name>``."""

    max_cg_iters: int = _default("max_cg_iters")                  # Martens 2010 §4.4
    init_damping: float = _default("init_damping")                # λ₀, tuned per problem
    structural_damping: float = _default("structural_damping")    # μ, M&S 2011 §3.2
    curvature_batch_fraction: float = _default("curvature_batch_fraction")
    cg_decay: float = _default("cg_decay")                        # Martens 2010 §4.5
    lm_shrink: float = _default("lm_shrink")                      # Martens 2010 §4.1
    lm_grow: float = _default("lm_grow")                          # Martens 2010 §4.1
    rho_low: float = _default("rho_low")                          # Martens 2010 §4.1
    rho_high: float = _default("rho_high")                        # Martens 2010 §4.1
    line_search_factor: float = _default("line_search_factor")    # Martens's hf code
    armijo_c: float = _default("armijo_c")                        # Martens's hf code
    cg_epsilon: float = _default("cg_epsilon")                    # Martens 2010 §4.4
    backtrack_base: float = _default("backtrack_base")            # Martens 2010 §4.6
    line_search_max_steps: int = _default("line_search_max_steps")  # then α = 0, step rejected

    @classmethod
    def from_options(cls, train_options: TrainOptions) -> "HFSettings":
        """The settings of a run: each field from the training option ``hf_<field>``."""
        return cls(**{f.name: getattr(train_options, f"hf_{f.name}") for f in fields(cls)})


# -- graph ------------------------------------------------------------------------
@dataclass
class HFGraph:
    """The symbolic pieces HF needs for one window.

    params : shared parameters (the flat vector is their concatenation, in order)
    inputs : the window's ports (``input_tbj, time_tb, id_tb, target_tbk``)
    s_output_tbk, s_target_tbk : outputs and targets of the loss frames
    s_hidden : hidden layers' outputs over the whole window, each [T][B][i]
    loss_type : one of :data:`HF_LOSS_TYPES`; for xent and bce ``s_output_tbk`` holds
        the logits (the output activation belongs to the loss, as in ``masked_loss``)
    """

    params: list
    inputs: list
    s_output_tbk: object
    s_target_tbk: object
    s_hidden: list
    loss_type: str = "l2"


def build_net_graph(net, step_size: int, loss_type: str = "l2", window_size=None,
                    batch_size=None) -> HFGraph:
    """:class:`HFGraph` of ``net`` on the scan engine, loss on the last ``step_size``
    frames, from zero states; the layers are built one by one as ``Net.forward`` does,
    so their outputs (the hidden states) are at hand. The output layer's pre-activations
    are the graph's outputs: the loss applies the activation (``net`` must have the one
    ``loss_type`` trains: identity, softmax, sigmoid). ``window_size`` and ``batch_size``
    (None: any) go into the ports' types, as in ``f_train_step``: JAX needs them static."""
    if loss_type not in HF_LOSS_TYPES:
        raise ValueError(f"Hessian-free supports loss_type {' | '.join(HF_LOSS_TYPES)}; got {loss_type!r}")
    wanted = OUTPUT_OF_LOSS[loss_type]
    if net.options.output_activation != wanted:
        raise ValueError(f"loss_type {loss_type!r} trains {wanted!r} outputs, but this net's "
                         f"output_activation is {net.options.output_activation!r}")
    with th.config.change_flags(floatX=net.dtype):
        ports = net.ports(window_size, batch_size)
        choices = net.choose_engines("auto", training=True, prefer="scan")
        if any(c.engine != "scan" for c in choices):
            raise ValueError("Hessian-free needs the scan engine for every layer; got "
                             + ", ".join(c.engine for c in choices))
        s_batch = ports.p_input_tbj.shape[1]
        s_zero_states = [tt.zeros((s_batch, w), dtype=net.dtype) for w in net.state_widths()]
        s_emb_tbe = None
        if net.v_id_embedding_ne is not None:
            s_id_tb = ports.p_id_tb
            s_emb_tbe = net.v_id_embedding_ne[s_id_tb.flatten()].reshape((s_id_tb.shape[0], s_id_tb.shape[1], -1))
        s_below, s_hidden, n = ports.p_input_tbj, [], 0
        for layer in net.layers + [net.output_layer]:
            width = len(layer.state_widths)
            s_in = s_below if s_emb_tbe is None else tt.concatenate([s_below, s_emb_tbe], axis=2)
            out = layer.build(s_in, ports.p_time_tb, s_zero_states[n:n + width], carry_frame=0,
                              training=True, engine="scan", unroll=False, s_skip_tbi=s_below)
            s_below, n = out.s_output_tbi, n + width
            s_hidden.append(s_below)
        return HFGraph(list(net.v_params.values()), ports.inputs(), s_below[-step_size:],
                       ports.p_target_tbk[-step_size:], s_hidden[:-1], loss_type)


def build_batch_graphs(net, step_size: int, loss_type: str, window_size: int, batch_size: int,
                       curvature_fraction: float) -> tuple[HFGraph, HFGraph]:
    """``(graph, curvature_graph)``: :func:`build_net_graph` with the gradient batch's
    static size and with the curvature batch's (:func:`curvature_rows`), for
    :func:`compile_functions`."""
    return tuple(build_net_graph(net, step_size, loss_type, window_size, batch)
                 for batch in (batch_size, curvature_rows(batch_size, curvature_fraction)))


def output_hessian_times(s_output_tbk, s_target_tbk, s_r_tbk, loss_type="l2"):
    """H_L · r, H_L the Hessian of the loss per target frame (``masked_loss``'s sum /
    its n_frames) w.r.t. the output layer's pre-activations z, on frames and elements
    that carry a target (0 elsewhere):

    - ``l2`` (z = y): 2 r / n_frames;
    - ``xent`` (z the softmax logits, p = softmax(z)): (diag(p) − p pᵀ) r / n_frames;
    - ``bce`` (z the sigmoid logits, p = σ(z)): p (1 − p) r / n_frames.
    """
    if loss_type not in HF_LOSS_TYPES:
        raise ValueError(f"no output Hessian for loss_type {loss_type!r}")
    _, s_n_frames = masked_loss(s_output_tbk, s_target_tbk, loss_type)
    s_scale = 1.0 / tt.maximum(s_n_frames, 1.0)
    s_valid = ~tt.isnan(s_target_tbk)
    if loss_type == "xent":
        s_frame = tt.any(s_valid, axis=-1, keepdims=True)
        s_hr = softmax_hessian_times(softmax(s_output_tbk, axis=-1), s_r_tbk)
        return tt.switch(s_frame, s_hr, 0.0) * s_scale
    if loss_type == "bce":
        s_p = tt.sigmoid(s_output_tbk)
        return tt.switch(s_valid, s_p * (1.0 - s_p) * s_r_tbk, 0.0) * s_scale
    return tt.switch(s_valid, 2.0 * s_r_tbk, 0.0) * s_scale


def softmax_hessian_times(s_prob_tbk, s_r_tbk):
    """(diag(p) − p pᵀ) r per frame: the Hessian of cross-entropy on softmax logits
    w.r.t. the logits (for a one-hot or any target summing to 1), as a function of the
    probabilities ``p``."""
    return s_prob_tbk * s_r_tbk - s_prob_tbk * tt.sum(s_prob_tbk * s_r_tbk, axis=-1, keepdims=True)


# -- compiled functions -------------------------------------------------------------
@dataclass
class HFFunctions:
    """``f_cost(*window) -> cost``, ``f_grad(*window) -> (cost, grad_j)``,
    ``f_gv(v_j, p_structural, *window) -> Gv_j`` (all flat over the parameters)."""

    f_cost: object
    f_grad: object
    f_gv: object


def _unflatten(s_flat_j, params):
    parts, offset = [], 0
    for p in params:
        shape = p.get_value(borrow=True).shape
        size = int(np.prod(shape))
        parts.append(tt.reshape(s_flat_j[offset:offset + size], shape))
        offset += size
    return parts


def _flatten(tensors):
    return tt.concatenate([tt.flatten(x) for x in tensors])


def gauss_newton_product(graph: HFGraph, p_v_j, p_structural):
    """Symbolic flat G v + p_structural · J_hᵀ J_h v / n_frames (see the module docstring).

    The R-ops give J v of the outputs and of every hidden layer; one reverse sweep pulls
    back all their cotangents together (H_L J v, and the structural term's scaled J_h v)
    rather than one L-op each (``bench/hf_step.py`` times the product against a gradient).
    """
    s_v = _unflatten(p_v_j, graph.params)
    s_outputs = [graph.s_output_tbk] + list(graph.s_hidden)
    s_jvs = [_jacobian_times(s_y, graph.params, s_v) for s_y in s_outputs]
    s_cotangents = [output_hessian_times(graph.s_output_tbk, graph.s_target_tbk, s_jvs[0], graph.loss_type)]
    if graph.s_hidden:
        _, s_n_frames = masked_loss(graph.s_output_tbk, graph.s_target_tbk, graph.loss_type)
        s_scale = p_structural / tt.maximum(s_n_frames, 1.0)
        s_cotangents += [s_scale * s_jhv for s_jhv in s_jvs[1:]]
    # Σ ⟨c_i, y_i⟩ with the cotangents held constant: its gradient is Σ J_iᵀ c_i, one reverse
    # sweep (pullback's known_grads would take a hidden layer's cotangent as its whole
    # gradient and drop what flows into it from the layers above).
    s_cotangents = [disconnected_grad(c) for c in s_cotangents]
    s_pairing = sum(tt.sum(c * y) for c, y in zip(s_cotangents, s_outputs))
    s_gv = tt.grad(s_pairing, graph.params, disconnected_inputs="ignore")
    return _flatten(s_gv)


def _jacobian_times(s_y, params, s_v):
    """J v of ``s_y`` w.r.t. ``params``: one forward-mode sweep through the Ops' own
    pushforwards (Scan's), which under JAX costs 0.6× PyTensor's default, two pullbacks
    (``bench/hf_step.py``); the default where an Op has none (the bidirectional layer's
    per-sequence reversal). One output per call: given a list, the default returned
    another tangent for the output than alone (alone it matches explicit Jacobians,
    tests/test_hessian_free.py)."""
    try:
        return pushforward(s_y, params, s_v, disconnected_outputs="ignore", use_op_pushforward=True)
    except NotImplementedError:
        return pushforward(s_y, params, s_v, disconnected_outputs="ignore")


def compile_functions(graph: HFGraph, mode=None, curvature_graph: HFGraph | None = None) -> HFFunctions:
    """Compile :class:`HFFunctions` for ``graph`` (``mode``: a PyTensor compile mode);
    ``f_gv`` from ``curvature_graph`` where given (the same net with the curvature
    batch's static size: :func:`curvature_rows`), else from ``graph``."""
    dtype = graph.params[0].dtype
    with th.config.change_flags(floatX=dtype):
        s_loss_sum, s_n_frames = masked_loss(graph.s_output_tbk, graph.s_target_tbk, graph.loss_type)
        s_cost = s_loss_sum / tt.maximum(s_n_frames, 1.0)
        s_grad_j = _flatten(tt.grad(s_cost, graph.params, disconnected_inputs="ignore"))
        p_v_j = tt.vector("p_v_j", dtype=dtype)
        p_structural = tt.scalar("p_structural", dtype=dtype)
        curvature = curvature_graph or graph
        s_gv_j = gauss_newton_product(curvature, p_v_j, p_structural)
        kw = dict(mode=mode, on_unused_input="ignore")
        return HFFunctions(th.function(graph.inputs, s_cost, name="f_hf_cost", **kw),
                           th.function(graph.inputs, [s_cost, s_grad_j], name="f_hf_grad", **kw),
                           th.function([p_v_j, p_structural] + curvature.inputs, s_gv_j, name="f_hf_gv", **kw))


# -- the numerical pieces -------------------------------------------------------------
@dataclass
class CGResult:
    """``x``: the last iterate; ``iterates``: [(i, x_i)] kept at ceil(base^j) and the last;
    ``phis``: φ(x_i) for i = 0..iterations; ``iterations``: CG iterations run."""

    x: np.ndarray
    iterates: list
    phis: list
    iterations: int


def conjugate_gradient(apply_a, b, x0, max_iters, epsilon=5e-4, backtrack_base=1.3,
                       precond_diag=None) -> CGResult:
    """Minimise φ(x) = ½ xᵀA x − bᵀx by (preconditioned) CG from ``x0``, A = ``apply_a``
    (symmetric positive definite), ``precond_diag`` an optional diagonal M ≈ A.

    Stops at ``max_iters`` or on Martens 2010's relative progress: φ_i < 0 and
    (φ_i − φ_{i−k}) / φ_i < k ε with k = max(10, 0.1 i).
    """
    x = np.array(x0, dtype=float, copy=True)
    ax = apply_a(x)
    r = b - ax
    y = r / precond_diag if precond_diag is not None else r
    d, ry = y.copy(), r @ y
    phis = [0.5 * x @ ax - b @ x]
    keep = {math.ceil(backtrack_base ** j) for j in range(200) if backtrack_base ** j <= max_iters + 1}
    iterates, i = [], 0
    while i < max_iters:
        ad = apply_a(d)
        curvature = d @ ad
        if not curvature > 0 or ry == 0:         # converged exactly, or A is not positive there
            break
        step = ry / curvature
        x, ax, r = x + step * d, ax + step * ad, r - step * ad
        i += 1
        phis.append(0.5 * x @ ax - b @ x)
        if i in keep:
            iterates.append((i, x.copy()))
        k = max(10, int(0.1 * i))
        if i > k and phis[i] < 0 and (phis[i] - phis[i - k]) / phis[i] < k * epsilon:
            break
        y = r / precond_diag if precond_diag is not None else r
        ry_new = r @ y
        d, ry = y + (ry_new / ry) * d, ry_new
    if not iterates or iterates[-1][0] != i:
        iterates.append((i, x.copy()))
    return CGResult(x, iterates, phis, i)


def backtrack(iterates, objective):
    """``(i, x_i, f_i)`` of the kept iterate with the smallest ``objective(x)``.

    Martens 2010 §4.6 walks back from the last iterate and stops at the first
    increase; this evaluates every kept iterate (≈ log₁.₃ of the iterations) and
    takes the best, which is never worse.

    A NaN objective (an iterate so far out that the loss overflows) counts as +inf, so it
    is never chosen over a finite one.
    """
    best = None
    for i, x in iterates:
        f = objective(x)
        if math.isnan(f):
            f = math.inf
        if best is None or f < best[2]:
            best = (i, x, f)
    return best


def armijo_line_search(objective, f0, slope, f1=None, c=1e-2, factor=0.8, max_steps=60):
    """``(alpha, f_alpha)``: the largest α = factorⁿ (n < max_steps) with
    objective(α) ≤ f0 + c α slope; ``(0.0, f0)`` when none or when ``slope`` ≥ 0 (not
    a descent direction). ``f1`` is objective(1) if already known."""
    if not slope < 0:
        return 0.0, f0
    alpha = 1.0
    for n in range(max_steps):
        f = f1 if (n == 0 and f1 is not None) else objective(alpha)
        if f <= f0 + c * alpha * slope:
            return alpha, f
        alpha *= factor
    return 0.0, f0


def levenberg_marquardt(damping, rho, settings: HFSettings):
    """The next λ: × lm_shrink when ρ > rho_high, × lm_grow when ρ < rho_low or NaN."""
    if not rho >= settings.rho_low:
        return damping * settings.lm_grow
    if rho > settings.rho_high:
        return damping * settings.lm_shrink
    return damping


def curvature_rows(batch_size: int, fraction: float) -> int:
    """Streams of the curvature batch: ceil(fraction · B), at least 1."""
    return max(1, math.ceil(fraction * batch_size))


def curvature_slice(batch, fraction):
    """The first :func:`curvature_rows` streams of a window ``(input_tbj, time_tb, id_tb, target_tbk)``."""
    return tuple(a[:, :curvature_rows(batch[0].shape[1], fraction)] for a in batch)


# -- the driver -----------------------------------------------------------------------
@dataclass
class StepReport:
    """What one :meth:`HessianFree.step` did (losses on the gradient batch)."""

    loss_before: float
    loss_after: float
    rho: float
    damping: float               # λ used by this step's CG
    next_damping: float          # λ after the Levenberg–Marquardt rule
    cg_iterations: int
    backtrack_iteration: int     # the CG iteration whose iterate was chosen
    alpha: float                 # line-search step; 0 means the step was rejected
    accepted: bool = field(init=False)

    def __post_init__(self):
        self.accepted = self.alpha > 0


class HessianFree:
    """Hessian-free steps on shared ``params`` with compiled :class:`HFFunctions`.

    State (saved by :meth:`state_dict`): the damping λ and the last CG solution,
    which seeds the next CG run (× ``cg_decay``).
    """

    def __init__(self, params, functions: HFFunctions, settings: HFSettings = HFSettings()):
        self.params, self.functions, self.settings = list(params), functions, settings
        self._shapes = [p.get_value(borrow=True).shape for p in self.params]
        size = int(sum(np.prod(s) for s in self._shapes))
        self.damping = float(settings.init_damping)
        self.direction_j = np.zeros(size)

    # -- flat parameter vector
    def get_flat(self) -> np.ndarray:
        return np.concatenate([p.get_value(borrow=True).ravel() for p in self.params])

    def set_flat(self, theta_j) -> None:
        """As a side effect, sets every parameter's shared value from ``theta_j``."""
        offset = 0
        for p, shape in zip(self.params, self._shapes):
            size = int(np.prod(shape))
            p.set_value(np.asarray(theta_j[offset:offset + size], p.dtype).reshape(shape))
            offset += size

    def step(self, batch_for_gradient, batch_for_curvature) -> StepReport:
        """One HF step; as a side effect it updates the parameters, λ and the CG direction.

        Gradient, backtracking, ρ and line search use ``batch_for_gradient``; the
        curvature products use ``batch_for_curvature`` (see :func:`curvature_slice`).
        """
        s, fn = self.settings, self.functions
        theta_j = self.get_flat()
        f0, grad_j = fn.f_grad(*batch_for_gradient)
        f0, grad_j = float(f0), np.asarray(grad_j, float)
        lam = self.damping

        def gv(v_j, structural):
            return np.asarray(fn.f_gv(v_j.astype(theta_j.dtype), np.asarray(structural, theta_j.dtype),
                                      *batch_for_curvature), float)     # in the net's dtype (float32 too)

        def objective(delta_j):
            self.set_flat(theta_j + delta_j)
            return float(fn.f_cost(*batch_for_gradient))

        cg = conjugate_gradient(lambda v: gv(v, s.structural_damping * lam) + lam * v, -grad_j,
                                s.cg_decay * self.direction_j, s.max_cg_iters, s.cg_epsilon, s.backtrack_base)
        self.direction_j = cg.x                 # the next run starts from the last iterate, not the chosen one
        chosen, p_j, f_p = backtrack(cg.iterates, objective)
        self.set_flat(theta_j)                  # backtracking left the last iterate's; G is θ's
        q = grad_j @ p_j + 0.5 * p_j @ gv(p_j, 0.0)     # the undamped model (HF-RNN divides by the damped one)
        rho = (f_p - f0) / q if q < 0 else float("-inf")
        alpha, f_alpha = armijo_line_search(lambda a: objective(a * p_j), f0, grad_j @ p_j, f1=f_p,
                                            c=s.armijo_c, factor=s.line_search_factor,
                                            max_steps=s.line_search_max_steps)
        self.set_flat(theta_j + alpha * p_j)
        self.damping = levenberg_marquardt(lam, rho, s)
        return StepReport(f0, f_alpha, float(rho), lam, self.damping, cg.iterations, chosen, alpha)

    # -- state
    def state_dict(self) -> dict:
        """Copies of the HF state as arrays (for ``.npz``): ``hf.damping``, ``hf.direction_j``."""
        return {"hf.damping": np.array(self.damping), "hf.direction_j": self.direction_j.copy()}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; raises ValueError if the direction does not fit."""
        direction_j = np.asarray(state["hf.direction_j"], float)
        if direction_j.shape != self.direction_j.shape:
            raise ValueError(f"hf.direction_j has shape {direction_j.shape}, expected {self.direction_j.shape}")
        self.damping, self.direction_j = float(state["hf.damping"]), direction_j.copy()

    def rollback_reset(self) -> None:
        """After an annealing rollback (parameters restored to an earlier point): λ back to
        ``init_damping`` and the CG seed direction to zero, since both described the
        curvature around parameters that are gone."""
        self.damping = float(self.settings.init_damping)
        self.direction_j = np.zeros_like(self.direction_j)
