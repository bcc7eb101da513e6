import pytest

from vivace.schedule import SizeSchedule, flat_cos, one_cycle, one_cycle_momentum


def test_one_cycle_known_points():
    s = one_cycle(1.0, div=25, div_final=1e5, pct_start=0.25)
    assert s(0.0) == pytest.approx(1 / 25)
    assert s(0.125) == pytest.approx((1 / 25 + 1) / 2)  # halfway up the cosine
    assert s(0.25) == pytest.approx(1.0)
    assert s(1.0) == pytest.approx(1e-5)
    assert s(0.625) == pytest.approx((1 + 1e-5) / 2)


def test_momentum_mirrors_lr():
    m = one_cycle_momentum((0.95, 0.85, 0.95), 0.25)
    assert m(0) == pytest.approx(0.95) and m(0.25) == pytest.approx(0.85) and m(1) == pytest.approx(0.95)


def test_flat_cos():
    s = flat_cos(0.1, pct_start=0.75, div_final=1e5)
    assert s(0) == s(0.5) == s(0.75) == pytest.approx(0.1)
    assert s(0.875) == pytest.approx((0.1 + 1e-6) / 2)
    assert s(1.0) == pytest.approx(1e-6)


def test_size_schedule_steps():
    s = SizeSchedule(128, start_frac=0.5, ramp_end=0.75, multiple=32)
    assert [s(p) for p in (0.0, 0.375, 0.75, 1.0)] == [64, 96, 128, 128]
    assert all(s(p / 100) % 32 == 0 and 64 <= s(p / 100) <= 128 for p in range(101))
    with pytest.raises(ValueError, match="start_frac"):
        SizeSchedule(128, start_frac=0)


def test_a_size_ramp_can_start_late_as_ffcvs_imagenet_configs():
    # FFCV's rn50 at 16 epochs: 160 px to epoch 11, ramp to 192 by 13, snapped to 32: 192 from epoch 12.
    s = SizeSchedule(192, start_frac=160 / 192, ramp_end=13 / 16, multiple=32, ramp_start=11 / 16)
    assert [s(epoch / 16) for epoch in range(16)] == [160] * 12 + [192] * 4
    with pytest.raises(ValueError, match="ramp_start=0.8 must be in"):
        SizeSchedule(192, start_frac=0.5, ramp_end=0.75, ramp_start=0.8)
