"""The annealing schedule on scripted dev losses (no PyTensor, no files)."""
import json
import math

import pytest

from sophia.training.annealer import Annealer, Decision


class FakeClock:
    """A clock the test moves by hand, in seconds."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def make(**overrides):
    settings = dict(lr_init=1e-3, lr_lower_bound=1e-4, lr_decay_rate=0.5, max_retry=2)
    settings.update(overrides)
    return Annealer(**settings)


def flags(d: Decision):
    return (d.save_best, d.save_pivot, d.rollback, d.stop)


def test_improving_losses_save_best_and_pivot_each_epoch():
    a = make()
    for n, loss in enumerate([1.0, 0.5, 0.4, 0.1], start=1):
        d = a.observe(loss)
        assert flags(d) == (True, True, False, False)
        assert d.reason == "new best" and d.lr == 1e-3 and d.epoch == n
    assert (a.best_loss, a.pivot_loss, a.previous_loss, a.retries, a.epochs) == (0.1, 0.1, 0.1, 0, 4)


def test_better_than_previous_but_not_best_saves_pivot_only():
    a = make()
    a.observe(1.0)
    a.observe(2.0)
    d = a.observe(1.5)
    assert flags(d) == (False, True, False, False)
    assert a.retries == 0 and a.pivot_loss == 1.5 and a.best_loss == 1.0


def test_retries_then_rollback_with_decayed_lr_and_previous_reset_to_pivot():
    a = make()
    a.observe(1.0)
    a.observe(0.8)                      # pivot = best = 0.8
    d1 = a.observe(0.9)
    assert flags(d1) == (False, False, False, False)
    assert d1.reason == "worse (retry 1/2)" and a.previous_loss == 0.9
    d2 = a.observe(0.95)
    assert d2.reason == "worse (retry 2/2)" and a.retries == 2
    d3 = a.observe(0.97)
    assert flags(d3) == (False, False, True, False)
    assert d3.lr == a.lr == 5e-4
    assert d3.reason == "rollback: lr 0.001 -> 0.0005"
    assert a.retries == 0 and a.previous_loss == a.pivot_loss == 0.8
    # After the rollback, a loss between the pivot's and the last worse one is still worse.
    d4 = a.observe(0.85)
    assert flags(d4) == (False, False, False, False) and a.retries == 1


def test_stops_when_lr_falls_below_lower_bound():
    a = make(lr_init=1e-3, lr_lower_bound=3e-4, max_retry=0)
    a.observe(1.0)
    d = a.observe(2.0)                  # rollback: 1e-3 -> 5e-4, still >= bound
    assert d.rollback and not d.stop
    d = a.observe(2.0)                  # rollback: 5e-4 -> 2.5e-4 < bound
    assert d.rollback and d.stop
    assert "stop: lr below lower bound" in d.reason and d.lr == 2.5e-4


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_counts_as_worse(bad):
    a = make(max_retry=1)
    a.observe(1.0)
    d = a.observe(bad)
    assert flags(d) == (False, False, False, False) and a.retries == 1
    assert a.best_loss == 1.0
    d = a.observe(bad)
    assert d.rollback and a.lr == 5e-4 and a.previous_loss == 1.0


def test_non_finite_first_losses_then_first_finite_is_best_and_pivot():
    a = make()
    assert not a.observe(math.nan).save_best
    d = a.observe(3.0)
    assert flags(d) == (True, True, False, False)
    assert a.best_loss == a.pivot_loss == 3.0


def test_stops_at_max_epochs():
    a = make(max_epochs=3)
    decisions = [a.observe(loss) for loss in (1.0, 0.9, 0.8)]
    assert [d.stop for d in decisions] == [False, False, True]
    assert decisions[-1].reason == "new best; stop: max_epochs reached"
    assert decisions[-1].save_best            # the last epoch's model is still saved


def test_stops_at_max_hours_with_a_fake_clock():
    clock = FakeClock()
    a = make(max_hours=2.0, clock=clock)
    clock.now += 3600
    assert not a.observe(1.0).stop
    clock.now += 3599
    assert not a.observe(0.9).stop
    clock.now += 1
    d = a.observe(0.8)
    assert d.stop and d.reason == "new best; stop: max_hours reached"


def test_stops_once_the_loss_reaches_the_target():
    a = make(target_loss=0.25)
    decisions = [a.observe(loss) for loss in (1.0, 0.26, 0.3)]
    assert not any(d.stop for d in decisions)
    d = a.observe(0.25)
    assert d.stop and d.save_best and d.reason == "new best; stop: target_dev_loss reached"
    assert not make().observe(0.0).stop          # 0 = no target


def test_stops_once_every_target_is_within_the_target_max_error():
    a = make(target_max_error=0.04)
    assert not a.observe(1.0, 0.05).stop
    assert not a.observe(1.1).stop                # no max error passed: the rule does not apply
    a.observe(1.3)                                # worse twice: the next worse one would roll back
    d = a.observe(1.4, 0.04)                      # the goal is met: stop, keep this model
    assert d.stop and d.save_best and not d.rollback and a.best_loss == 1.4
    assert d.reason == "stop: target_dev_max_error reached (model saved as best)"
    assert not make().observe(0.5, 0.0).stop      # 0 = no target
    b = make(target_max_error=0.04)
    b.load_state(json.loads(json.dumps(a.state_dict())))
    assert b.observe(1.0, 0.01).stop


def test_stops_once_the_training_streak_reaches_its_target():
    a = make(target_streak=2000)
    assert not a.observe(1.0, train_streak=1999).stop
    d = a.observe(1.5, train_streak=2000)
    assert d.stop and d.save_best and d.reason == "stop: target_train_streak reached (model saved as best)"
    assert not make().observe(0.5, train_streak=10 ** 6).stop


def test_from_options_takes_every_annealing_option():
    from sophia.options import TrainOptions
    o = TrainOptions(lr_init_val=0.01, lr_lower_bound=1e-4, lr_decay_rate=0.3, max_retry=5,
                     max_epochs=7, max_hours=2.0, target_dev_loss=0.1, diverge_ratio=4.0,
                     target_dev_max_error=0.04, patience_from_best=True, target_train_streak=9)
    a = Annealer.from_options(o)
    assert (a.lr, a.lr_lower_bound, a.lr_decay_rate, a.max_retry) == (0.01, 1e-4, 0.3, 5)
    assert (a.max_epochs, a.max_hours, a.target_loss, a.diverge_ratio) == (7, 2.0, 0.1, 4.0)
    assert (a.target_max_error, a.patience_from_best, a.target_streak) == (0.04, True, 9)


def test_round_trip_through_json_mid_run_gives_identical_decisions():
    clock = FakeClock()
    a = make(max_retry=1, max_hours=1.0, lr_lower_bound=1e-5, clock=clock)
    for loss in (math.nan, 1.0, 0.7, math.inf):
        clock.now += 60
        a.observe(loss)
    d = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    clock_b = FakeClock(now=5.0)        # a new process: another monotonic origin
    b = make(max_retry=1, max_hours=1.0, lr_lower_bound=1e-5, clock=clock_b)
    b.load_state(d)
    assert b.state_dict() == a.state_dict()
    for loss in (0.8, math.nan, 0.6, 0.9, 0.95, 0.5, 0.55, 0.6, 0.7, 0.4, 0.45, 0.5):
        clock.now += 300
        clock_b.now += 300
        assert a.observe(loss) == b.observe(loss)
    assert a.lr < 1e-3 and a.observe(1.0).stop and b.observe(1.0).stop
    assert b.state_dict() == a.state_dict()


def test_initial_state_round_trips_with_infinite_losses_as_none():
    d = make().state_dict()
    assert d["best_loss"] is None and d["pivot_loss"] is None
    b = make()
    b.start_from(1.0)
    b.load_state(json.loads(json.dumps(d, allow_nan=False)))
    assert b.best_loss == math.inf and b.observe(2.0).save_best


@pytest.mark.parametrize("bad", [dict(lr_init_val=0.0), dict(lr_decay_rate=1.5),
                                 dict(max_retry=-1), dict(lr_lower_bound=-1.0),
                                 dict(max_epochs=-1), dict(max_hours=-0.5), dict(diverge_ratio=0.5)])
def test_out_of_range_settings_are_option_errors_before_an_annealer_exists(bad):
    from sophia.options import OptionError, TrainOptions
    with pytest.raises(OptionError, match=next(iter(bad))):
        Annealer.from_options(TrainOptions(**bad).validate())


def test_a_state_with_missing_keys_is_a_value_error():
    d = make().state_dict()
    del d["retries"]
    with pytest.raises(ValueError, match="retries"):
        make().load_state(d)


def test_start_from_sets_the_loss_to_beat_and_exhaust_patience_rolls_back_at_once():
    annealer = Annealer(1e-3, 1e-6, 0.5, max_retry=3)
    annealer.start_from(0.5)
    assert annealer.observe(0.6).save_best is False       # worse than the starting model
    annealer.exhaust_patience()
    decision = annealer.observe(float("nan"))
    assert decision.rollback and decision.lr == pytest.approx(5e-4)
    annealer.start_from(float("inf"))                       # ignored
    assert annealer.best_loss == 0.5


def test_patience_from_best_decays_a_noisy_loss_that_never_sets_a_new_best():
    """A dev loss bouncing above its best: every other epoch beats the previous one."""
    noisy = (1.0, 1.5, 1.2, 1.6, 1.3, 1.7, 1.4)
    plain = make(max_retry=1)
    assert not any(plain.observe(x).rollback for x in noisy) and plain.lr == 1e-3
    from_best = make(max_retry=1, patience_from_best=True)
    reasons = [from_best.observe(x).reason for x in noisy]
    assert reasons[:3] == ["new best", "no new best (retry 1/1)", "rollback: lr 0.001 -> 0.0005"]
    assert from_best.pivot_loss == 1.0 and from_best.lr < 1e-3
    d = from_best.observe(0.9)
    assert d.save_best and d.save_pivot and from_best.retries == 0


def test_collapse_far_above_the_best_rolls_back_to_the_best():
    """A run that learned (0.001) and collapsed to a plateau (≈ 0.04) whose noise keeps
    beating the previous epoch: with diverge_ratio those epochs count as worse, so
    the run rolls back to the pivot saved at its best; without it, it never does."""
    trace = [0.04, 0.01, 0.001, 0.03, 0.045, 0.041, 0.043, 0.040, 0.044, 0.039]
    guarded = make(max_retry=2, diverge_ratio=10.0)
    reasons = [guarded.observe(x).reason for x in trace[:6]]
    assert reasons[3:] == ["worse (retry 1/2)", "worse (retry 2/2)", "rollback: lr 0.001 -> 0.0005"]
    assert guarded.previous_loss == guarded.pivot_loss == 0.001
    plain = make(max_retry=2)
    assert not any(plain.observe(x).rollback for x in trace)
    d = make(max_retry=2, diverge_ratio=10.0)
    for x in (0.001, 0.02):
        d.observe(x)
    assert d.observe(0.015).reason == "diverged (retry 2/2)"   # better than previous, still 15x the best


def test_divergence_of_a_loss_below_zero():
    """A negative log-likelihood (loss_type gaussian) improves below 0: each new low is a
    new best, never "diverged"; a jump far above the best, still better than the
    epoch before, is one (above best + (ratio - 1)·|best|)."""
    a = make(max_retry=2, diverge_ratio=10.0)
    assert [a.observe(x).reason for x in (0.4, -0.15, -0.45, -0.9)] == ["new best"] * 4
    assert a.observe(-0.7).reason == "worse (retry 1/2)"
    assert a.observe(9.0).reason == "worse (retry 2/2)"
    assert a.observe(8.5).reason.startswith("rollback")         # 8.5 > -0.9 + 9 * 0.9
    b = make(max_retry=2, diverge_ratio=10.0)
    for x in (-0.9, 0.5):
        b.observe(x)
    assert b.observe(0.2).reason == "better than previous"      # 0.2 < -0.9 + 8.1
