"""Train a Sophia recurrent net: edit the options below, or override them with
``--config configs/NAME.toml`` and ``--set name=value``; ``python train.py --help``.

Examples::

    python train.py --demo
    python -m sophia.data make adding --out data/adding      # or: sophia-data make ...
    python train.py --data_dir data/adding --save_to workspaces/adding --config configs/adding.toml

The logic lives in :mod:`sophia.training.cli`; this script only holds the defaults.
"""
import sys

from sophia.training.cli import main

OPTIONS = dict(
    # -- model: the architecture, saved with the model (sophia.options.ModelOptions)
    input_dim=0,                # input frame width; 0 = inferred from the data
    target_dim=0,               # target frame width; 0 = inferred from the data
    unit_type="lstm",           # fc | lstm | gru
    net_width=64,               # units per hidden layer
    net_depth=2,                # number of hidden layers
    fc_activation="tanh",       # activation of hidden fc layers
    peephole=False,             # LSTM peephole connections
    weight_norm=False,          # weight normalization (Salimans & Kingma 2016)
    layer_norm=False,           # layer normalization (Ba et al. 2016)
    batch_norm=False,           # recurrent batch norm (Cooijmans et al. 2016); no .time data, batch_size >= 2
    batch_norm_steps=200,       # time steps with their own population statistics
    batch_norm_momentum=0.1,    # running-average rate of the population statistics
    residual_gate=False,        # out = g*layer(x) + (1-g)*x where widths match
    learn_init_states=True,     # learned initial h (and c); zeros otherwise
    learn_id_embedding=False,   # learned embedding of each stream's sequence ID
    id_embedding_dim=8,         # width of that embedding
    num_ids=0,                  # number of sequence IDs; 0 = inferred from the data
    learn_clock_params=False,   # Phased-LSTM time gate (Neil et al. 2016)
    clock_period_lo=0.0,        # log-period init range, low end (tau = exp(U(lo, hi)))
    clock_period_hi=3.0,        # log-period init range, high end
    clock_r_on=0.05,            # initial open ratio of the time gate
    clock_leak=0.001,           # leak alpha of the closed gate while training
    init_type="uniform",        # uniform(+-init_scale) | glorot
    init_scale=0.1,             # half-width of the uniform initialisation
    orthogonal_recurrent=True,  # orthogonal init of square recurrent matrices
    forget_bias=1.0,            # initial LSTM forget-gate bias
    input_bias=0.0,             # initial LSTM input-gate bias (< 0: cells start closed)
    # -- training: how it is trained, free to change between runs (sophia.options.TrainOptions)
    loss_type="l2",             # l2 | l1 | huber
    huber_delta=1.0,            # where huber turns from quadratic to linear
    batch_size=16,              # streams trained in parallel
    eval_batch_size=0,          # streams evaluated in parallel (dev loss); 0 = batch_size
    window_size=64,             # h: frames of each BPTT window
    step_size=32,               # h': new frames per window (the loss covers these)
    update_type="sgd",          # sgd | momentum | nesterov
    update_mu=0.9,              # momentum coefficient
    force_type="adam",          # vanilla | adadelta | rmsprop | adam
    rms_decay=0.9,              # rmsprop decay of the squared-gradient average
    adadelta_decay=0.95,        # adadelta decay of both running averages
    adam_beta1=0.9,             # adam first-moment decay
    adam_beta2=0.999,           # adam second-moment decay
    force_epsilon=1e-6,         # denominator guard of adadelta/rmsprop/adam
    grad_norm_clip=0.0,         # clip the gradient's global norm to this; 0 = off
    ema_decay=0.0,              # evaluate and save a running average of the weights; 0 = off
    frames_per_epoch=100_000,   # training frames between dev evaluations
    lr_init_val=1e-3,           # initial learning rate
    lr_lower_bound=1e-5,        # stop when the learning rate falls below this
    lr_decay_rate=0.5,          # learning-rate factor at each rollback
    max_retry=2,                # worse evaluations tolerated before a rollback
    patience_from_best=False,   # "worse" = no new best (else: not better than the previous)
    diverge_ratio=10.0,         # a dev loss above this x the best counts as worse; 0 = off
    max_epochs=0,               # stop after this many epochs; 0 = no limit
    max_hours=0.0,              # stop after this many hours; 0 = no limit
    target_dev_loss=0.0,        # stop once the dev loss is at or below this; 0 = never
    target_dev_max_error=0.0,   # stop once every dev target is within this of the output; 0 = never
    target_train_streak=0,      # stop once this many training target frames in a row were right; 0 = never
    streak_tolerance=0.04,      # |error| up to which a training target frame counts as right
    unroll_scan=False,          # unrolled graph instead of scan (same results)
    compile_mode="auto",        # auto | FAST_COMPILE | FAST_RUN | CVM | NUMBA | JAX
)

if __name__ == "__main__":
    sys.exit(main(options=OPTIONS))
