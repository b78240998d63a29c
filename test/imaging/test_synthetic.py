"""Tests of cldyn_ros.imaging.synthetic: the synthetic scene generator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cldyn_ros.imaging.io import find_pairs, read_color, read_thermal
from cldyn_ros.imaging.synthetic import (
    CONDITIONS,
    SceneGenerator,
    SyntheticPair,
    generate_pairs,
    write_pairs,
)

H, W = 96, 128  # small frames keep the tests fast


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("bits", [8, 16])
def test_shapes_and_dtypes(condition, bits):
    gen = SceneGenerator(seed=1, height=H, width=W, condition=condition, thermal_bits=bits)
    pair = gen.render()
    assert isinstance(pair, SyntheticPair)
    assert pair.ir.shape == (H, W) and pair.ir.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert pair.vis.shape == (H, W, 3) and pair.vis.dtype == np.uint8
    assert pair.warm_mask.shape == (H, W) and pair.warm_mask.dtype == np.bool_
    assert pair.name and "/" not in pair.name and condition in pair.name


def test_16bit_uses_realistic_raw_count_range():
    ir = SceneGenerator(seed=2, thermal_bits=16).render(0.5).ir
    assert 6000 < ir.min() and ir.max() < 11000
    # Most of the scene sits in a narrow band, far from the 16-bit full scale.
    lo, hi = np.percentile(ir, [5, 95])
    assert 7000 <= lo < hi <= 9000


def test_deterministic_for_seed_and_t():
    a = SceneGenerator(seed=5, height=H, width=W).render(1.25)
    b = SceneGenerator(seed=5, height=H, width=W).render(1.25)
    for field in ("ir", "vis", "warm_mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.name == b.name
    c = SceneGenerator(seed=6, height=H, width=W).render(1.25)
    assert not np.array_equal(a.vis, c.vis)


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("bits", [8, 16])
def test_warm_objects_warmer_than_background(condition, bits):
    gen = SceneGenerator(seed=0, height=H, width=W, condition=condition, thermal_bits=bits)
    for t in (0.0, 2.0):
        pair = gen.render(t)
        assert pair.warm_mask.mean() > 0.01
        ir = pair.ir.astype(np.float64)
        assert ir[pair.warm_mask].mean() > ir[~pair.warm_mask].mean() + 5


def test_night_darker_than_day_same_layout():
    night = SceneGenerator(seed=3, height=H, width=W, condition="night").render()
    day = SceneGenerator(seed=3, height=H, width=W, condition="day").render()
    assert night.vis.mean() < 0.5 * day.vis.mean()
    # The layout does not depend on the condition.
    np.testing.assert_array_equal(night.warm_mask, day.warm_mask)


def test_people_hard_to_see_at_night():
    gen_night = SceneGenerator(seed=4, height=H, width=W, condition="night")
    gen_day = SceneGenerator(seed=4, height=H, width=W, condition="day")
    night, day = gen_night.render(), gen_day.render()

    def contrast(vis: np.ndarray, mask: np.ndarray) -> float:
        grey = vis.astype(np.float64).mean(axis=2)
        return abs(grey[mask].mean() - grey[~mask].mean())

    assert contrast(night.vis, night.warm_mask) < contrast(day.vis, day.warm_mask)


def test_glare_saturates_part_of_the_frame():
    vis = SceneGenerator(seed=0, height=H, width=W, condition="glare").render().vis
    saturated = np.all(vis >= 250, axis=2).mean()
    assert 0.05 < saturated < 0.6


def test_fog_lowers_contrast():
    fog = SceneGenerator(seed=0, height=H, width=W, condition="fog").render().vis
    day = SceneGenerator(seed=0, height=H, width=W, condition="day").render().vis
    assert fog.astype(float).std() < 0.7 * day.astype(float).std()


def test_motion_over_time():
    gen = SceneGenerator(seed=7, height=H, width=W, n_people=2, n_vehicles=2)
    f0, f1, f2 = gen.render(0.0), gen.render(1 / 30), gen.render(1.0)
    assert not np.array_equal(f0.warm_mask, f2.warm_mask)
    # Consecutive 30 Hz frames differ only a little: the objects move smoothly.
    small_step = np.mean(f0.warm_mask != f1.warm_mask)
    big_step = np.mean(f0.warm_mask != f2.warm_mask)
    assert small_step < big_step
    assert f0.name != f1.name


def test_no_actors_means_empty_mask():
    pair = SceneGenerator(seed=0, height=H, width=W, n_people=0, n_vehicles=0).render()
    assert not pair.warm_mask.any()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"condition": "rain"},
        {"thermal_bits": 12},
        {"height": 8},
        {"seed": -1},
        {"n_people": -1},
        {"width": 100.5},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        SceneGenerator(**kwargs)


def test_generate_pairs_cycles_conditions():
    pairs = generate_pairs(5, seed=1, height=H, width=W, conditions=("night", "day"))
    assert [p.name for p in pairs] == ["0000_night", "0001_day", "0002_night", "0003_day",
                                       "0004_night"]
    assert not np.array_equal(pairs[0].ir, pairs[2].ir)  # varied scenes
    again = generate_pairs(2, seed=1, height=H, width=W, conditions=("night", "day"))
    np.testing.assert_array_equal(again[1].vis, pairs[1].vis)
    sixteen = generate_pairs(1, height=H, width=W, thermal_bits=16)
    assert sixteen[0].ir.dtype == np.uint16


def test_write_pairs_round_trip(tmp_path):
    pairs = generate_pairs(3, height=H, width=W, thermal_bits=16)
    ir_dir, vi_dir = write_pairs(pairs, tmp_path / "out")
    assert (ir_dir, vi_dir) == (tmp_path / "out" / "ir", tmp_path / "out" / "vi")
    listing = find_pairs(ir_dir, vi_dir)
    assert [name for name, _, _ in listing.pairs] == [p.name for p in pairs]
    assert listing.ir_only == [] and listing.vi_only == []
    for (_, ir_file, vi_file), pair in zip(listing.pairs, pairs, strict=True):
        np.testing.assert_array_equal(read_thermal(ir_file), pair.ir)
        np.testing.assert_array_equal(read_color(vi_file), pair.vis)


def test_write_pairs_rejects_duplicate_names(tmp_path):
    pair = generate_pairs(1, height=H, width=W)[0]
    with pytest.raises(ValueError, match="unique"):
        write_pairs([pair, pair], tmp_path)


def test_render_is_fast():
    gen = SceneGenerator(seed=0, height=256, width=320)
    gen.render(0.0)  # warm-up
    start = time.perf_counter()
    for i in range(5):
        gen.render(i / 60)
    per_frame = (time.perf_counter() - start) / 5
    # The target is a few ms; the bound is loose for slow, shared test machines.
    assert per_frame < 0.1
