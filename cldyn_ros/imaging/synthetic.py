"""Synthetic infrared/visible street scenes for demos, tests and stream replay.

A :class:`SceneGenerator` lays out a street (sky, buildings with windows, trees, street lamps,
sidewalk, road) and places warm people and vehicles on it that move with constant velocity.
:meth:`SceneGenerator.render` draws the pair at any time ``t``:

- the thermal image is a temperature map (people ~30-35 degC, engines and exhausts much hotter,
  the clear sky very cold) blurred like thermal optics, with temporal and fixed-pattern noise,
  then mapped to 8-bit display values or to 16-bit raw counts (around 7000-9000);
- the visible image shows the same scene under a lighting ``condition`` that hides the people:
  ``"night"`` (dark and noisy), ``"glare"`` (a bright bloom saturating part of the frame),
  ``"fog"`` (contrast fading with distance) or ``"day"``.

Everything is drawn with vectorised numpy and cv2 primitives (no pixel loops): rendering a
256x320 pair takes a few milliseconds. The output depends only on the constructor arguments
and ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .io import write_image

__all__ = ["CONDITIONS", "SceneGenerator", "SyntheticPair", "generate_pairs", "write_pairs"]

#: Visible-light conditions understood by :class:`SceneGenerator`.
CONDITIONS: tuple[str, ...] = ("night", "day", "glare", "fog")

# cv2 drawing functions take fixed-point coordinates with this many fractional bits, so objects
# move smoothly by sub-pixel steps between frames of a 60 Hz replay.
_SHIFT = 4
_ONE = 1 << _SHIFT

# Linear model of a radiometric camera: raw counts = _COUNTS_AT_0C + _COUNTS_PER_K * degC.
# Gives ~7000 counts for a cold sky and ~8500-9000 for people and warm engines.
_COUNTS_AT_0C = 7600.0
_COUNTS_PER_K = 25.0


@dataclass
class SyntheticPair:
    """One rendered infrared/visible pair.

    Attributes:
        ir: HxW thermal image, ``uint8`` (display values) or ``uint16`` (raw counts).
        vis: HxWx3 ``uint8`` RGB visible image, registered pixel-for-pixel with ``ir``.
        name: file-name-safe identifier (no extension).
        warm_mask: HxW ``bool``, True on the people and vehicles.
    """

    ir: np.ndarray
    vis: np.ndarray
    name: str
    warm_mask: np.ndarray


@dataclass
class _Actor:
    """A moving person or vehicle; positions in pixels, speeds in pixels per second."""

    kind: str  # "person" or "vehicle"
    x0: float  # centre x at t = 0
    ground_y: float  # y of the feet / wheel bottoms, constant: motion is along the street
    vx: float
    height: float
    direction: int  # +1 facing right, -1 facing left
    phase: float  # gait phase (people)
    colors: tuple[tuple[float, ...], ...]
    temps: tuple[float, ...]


def _pt(x: float, y: float) -> tuple[int, int]:
    """A point in cv2 fixed-point coordinates."""
    return int(round(x * _ONE)), int(round(y * _ONE))


def _ln(v: float) -> int:
    """A length (radius, semi-axis) in cv2 fixed-point units, at least one unit."""
    return max(int(round(v * _ONE)), 1)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """HxW ``float32`` noise with unit standard deviation and features about ``cell`` px wide."""
    gh = max(2, int(math.ceil(height / cell)) + 2)
    gw = max(2, int(math.ceil(width / cell)) + 2)
    small = rng.standard_normal((gh, gw), dtype=np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    std = float(big.std())
    return big / std if std > 0 else big


def _gaussian_1d(n: int, centre: float, sigma: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float32)
    return np.exp(-0.5 * ((x - centre) / sigma) ** 2).astype(np.float32)


class SceneGenerator:
    """A deterministic, animated street scene rendered as infrared/visible pairs.

    Args:
        seed: non-negative seed; the layout (buildings, actors, velocities) depends only on it,
            so the same seed under different conditions shows the same street.
        height: image height in pixels (at least 32).
        width: image width in pixels (at least 32).
        condition: visible-light condition, one of :data:`CONDITIONS`.
        thermal_bits: 8 for display-ready ``uint8`` thermal images, 16 for ``uint16`` raw
            counts.
        n_people: number of walking people.
        n_vehicles: number of driving vehicles.

    Example:
        >>> gen = SceneGenerator(seed=3, condition="night")
        >>> frames = [gen.render(i / 30) for i in range(90)]  # 3 s of a 30 Hz stream
    """

    def __init__(
        self,
        seed: int = 0,
        height: int = 256,
        width: int = 320,
        condition: str = "night",
        thermal_bits: int = 8,
        n_people: int = 3,
        n_vehicles: int = 2,
    ) -> None:
        for name, value, minimum in (
            ("seed", seed, 0),
            ("height", height, 32),
            ("width", width, 32),
            ("n_people", n_people, 0),
            ("n_vehicles", n_vehicles, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        if thermal_bits not in (8, 16):
            raise ValueError(f"thermal_bits must be 8 or 16, got {thermal_bits!r}")

        self.seed = int(seed)
        self.height = int(height)
        self.width = int(width)
        self.condition = condition
        self.thermal_bits = int(thermal_bits)
        self.n_people = int(n_people)
        self.n_vehicles = int(n_vehicles)

        # Two streams: the layout must not depend on the condition, the weather may.
        layout_rng = np.random.default_rng([self.seed, 0])
        weather_rng = np.random.default_rng([self.seed, 1 + CONDITIONS.index(condition)])
        self._setup_weather(weather_rng)
        self._build_background(layout_rng)
        self._actors = self._make_actors(layout_rng)
        # Column offsets of the thermal detector: constant over time, like a real microbolometer.
        self._column_noise = (0.08 * layout_rng.standard_normal(self.width)).astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(seed={self.seed}, height={self.height}, width={self.width}, "
            f"condition={self.condition!r}, thermal_bits={self.thermal_bits}, "
            f"n_people={self.n_people}, n_vehicles={self.n_vehicles})"
        )

    # ------------------------------------------------------------------ scene setup

    def _setup_weather(self, rng: np.random.Generator) -> None:
        night = self.condition == "night"
        self._ambient = float(rng.uniform(6.0, 14.0) if night else rng.uniform(16.0, 24.0))
        # Sunlit asphalt warms up, at night it gives back the heat it stored during the day.
        self._road_excess = 3.0 if night else 6.0
        # Limits of the fixed linear "AGC" used for 8-bit thermal output.
        self._t_lo = self._ambient - 14.0
        self._t_hi = self._ambient + 34.0
        self._vis_noise = {"night": 0.035, "day": 0.008, "glare": 0.012, "fog": 0.01}[
            self.condition
        ]
        self._bloom_centre = (rng.uniform(0.2, 0.8), rng.uniform(0.12, 0.3))  # fractions of W, H
        self._airlight = np.array([0.74, 0.76, 0.79], dtype=np.float32)
        self._fog_beta = 0.6

    def _build_background(self, rng: np.random.Generator) -> None:
        h, w = self.height, self.width
        self._horizon = horizon = float(h * rng.uniform(0.34, 0.44))
        self._road_top = road_top = horizon + 0.3 * (h - horizon)
        hz, rt = int(round(horizon)), int(round(road_top))

        refl = np.empty((h, w, 3), dtype=np.float32)  # reflectance (colour under white light)
        temp = np.empty((h, w), dtype=np.float32)  # temperature in degC
        emit = np.zeros((h, w, 3), dtype=np.float32)  # light sources (lit windows, lamps)
        amb = self._ambient

        # Sky: a vertical gradient; a clear sky is far colder than anything on the ground.
        rows = np.linspace(0.0, 1.0, max(hz, 1), dtype=np.float32)[:, None]
        refl[:hz] = (np.array([0.45, 0.62, 0.88], np.float32)
                     + rows * np.array([0.3, 0.22, 0.05], np.float32))[:, None, :]
        sky_temp = amb - (8.0 if self.condition == "fog" else 35.0)
        temp[:hz] = sky_temp + 8.0 * rows

        # Ground: sidewalk band then road, with a curb and dashed lane markings.
        refl[hz:rt] = (0.52, 0.5, 0.47)
        temp[hz:rt] = amb + 1.0
        refl[rt:] = (0.24, 0.24, 0.25)
        temp[rt:] = amb + self._road_excess
        curb_h = max(1, h // 100)
        refl[rt:rt + curb_h] = (0.7, 0.7, 0.68)
        lane_y = road_top + 0.45 * (h - road_top)
        dash, gap = max(4, w // 12), max(3, w // 16)
        lane_h = max(1.0, (h - road_top) * 0.025)
        for lane_x in range(int(rng.integers(0, dash + gap)) - dash - gap, w, dash + gap):
            cv2.rectangle(refl, _pt(lane_x, lane_y), _pt(lane_x + dash, lane_y + lane_h),
                          (0.85, 0.85, 0.8), -1, cv2.LINE_8, _SHIFT)
            cv2.rectangle(temp, _pt(lane_x, lane_y), _pt(lane_x + dash, lane_y + lane_h),
                          amb + self._road_excess - 1.0, -1, cv2.LINE_8, _SHIFT)

        # Buildings along the horizon, with a grid of windows, some lit (warm inside).
        x: float = float(rng.uniform(-0.1, 0.0) * w)
        while x < w:
            bw = float(rng.uniform(0.1, 0.25) * w)
            top = horizon - float(rng.uniform(0.12, 0.32) * h)
            bottom = horizon + 0.02 * h
            wall = tuple(float(c) for c in rng.uniform(0.3, 0.65) * rng.uniform(0.8, 1.0, 3))
            cv2.rectangle(refl, _pt(x, top), _pt(x + bw, bottom), wall, -1, cv2.LINE_8, _SHIFT)
            cv2.rectangle(temp, _pt(x, top), _pt(x + bw, bottom), amb + 1.5, -1,
                          cv2.LINE_8, _SHIFT)
            win = max(2.0, 0.035 * h)
            for wy in np.arange(top + win, bottom - 2 * win, 2 * win):
                for wx in np.arange(x + win, x + bw - 1.5 * win, 2 * win):
                    lit = rng.random() < 0.35
                    p1, p2 = _pt(wx, wy), _pt(wx + win, wy + 1.2 * win)
                    cv2.rectangle(refl, p1, p2, (0.15, 0.17, 0.22), -1, cv2.LINE_8, _SHIFT)
                    cv2.rectangle(temp, p1, p2, amb + (6.0 if lit else 3.0), -1,
                                  cv2.LINE_8, _SHIFT)
                    if lit and self.condition == "night":
                        cv2.rectangle(emit, p1, p2, (0.7, 0.6, 0.35), -1, cv2.LINE_8, _SHIFT)
            x += bw + float(rng.uniform(0.0, 0.05) * w)

        # Trees: clusters of foliage on the sidewalk, slightly cooler than the air.
        for _ in range(int(rng.integers(2, 5))):
            tx = float(rng.uniform(0, w))
            base = horizon + float(rng.uniform(0.02, 0.2)) * (road_top - horizon)
            size = float(rng.uniform(0.06, 0.12) * h)
            cv2.rectangle(refl, _pt(tx - 0.1 * size, base - size), _pt(tx + 0.1 * size, base),
                          (0.25, 0.18, 0.1), -1, cv2.LINE_8, _SHIFT)
            cv2.rectangle(temp, _pt(tx - 0.1 * size, base - size), _pt(tx + 0.1 * size, base),
                          amb, -1, cv2.LINE_8, _SHIFT)
            for _ in range(5):
                cx = tx + float(rng.normal(0, 0.4 * size))
                cy = base - 1.3 * size + float(rng.normal(0, 0.3 * size))
                green = (float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.3, 0.5)), 0.1)
                r = _ln(size * float(rng.uniform(0.5, 0.8)))
                cv2.circle(refl, _pt(cx, cy), r, green, -1, cv2.LINE_8, _SHIFT)
                cv2.circle(temp, _pt(cx, cy), r, amb - 1.5, -1, cv2.LINE_8, _SHIFT)

        # Street lamps on the sidewalk; at night they light pools on the ground.
        lamps: list[tuple[float, float]] = []
        for lx in np.arange(float(rng.uniform(0.05, 0.3)) * w, w, float(rng.uniform(0.4, 0.6)) * w):
            base = horizon + 0.6 * (road_top - horizon)
            top = base - 0.3 * h
            cv2.rectangle(refl, _pt(lx - 0.004 * w, top), _pt(lx + 0.004 * w, base),
                          (0.2, 0.2, 0.2), -1, cv2.LINE_8, _SHIFT)
            cv2.rectangle(temp, _pt(lx - 0.004 * w, top), _pt(lx + 0.004 * w, base),
                          amb, -1, cv2.LINE_8, _SHIFT)
            head = (_pt(lx, top), (_ln(0.025 * w), _ln(0.008 * h)))
            cv2.ellipse(refl, head[0], head[1], 0, 0, 360, (0.8, 0.8, 0.75), -1, cv2.LINE_8,
                        _SHIFT)
            cv2.ellipse(temp, head[0], head[1], 0, 0, 360, amb + 25.0, -1, cv2.LINE_8, _SHIFT)
            if self.condition == "night":
                cv2.ellipse(emit, head[0], head[1], 0, 0, 360, (1.0, 0.9, 0.6), -1, cv2.LINE_8,
                            _SHIFT)
            lamps.append((float(lx), base))

        # Texture: multi-scale smooth noise, stronger on the ground than in the sky.
        texture = 0.08 * _smooth_noise(rng, h, w, 24.0) + 0.07 * _smooth_noise(rng, h, w, 3.0)
        texture[:hz] *= 0.3
        refl *= 1.0 + texture[:, :, None]
        np.clip(refl, 0.0, 1.0, out=refl)
        temp += 0.6 * _smooth_noise(rng, h, w, 12.0) + 0.2 * _smooth_noise(rng, h, w, 2.5)

        # Illumination (scalar per pixel) for this condition.
        if self.condition == "night":
            illum = np.full((h, w), 0.06, dtype=np.float32)
            illum[:hz] = 0.05
            for lx, base in lamps:
                illum += 0.45 * np.outer(_gaussian_1d(h, base, 0.25 * h),
                                         _gaussian_1d(w, lx, 0.08 * w))
        elif self.condition == "glare":
            illum = np.full((h, w), 0.6, dtype=np.float32)
        elif self.condition == "fog":
            illum = np.full((h, w), 0.85, dtype=np.float32)
        else:
            illum = np.full((h, w), 1.0, dtype=np.float32)
        self._illum = illum

        vis = refl * illum[:, :, None] + emit
        if self.condition == "fog":
            # Depth per row: far near the horizon; everything above it is as far as the horizon.
            ground = np.clip((np.arange(h, dtype=np.float32) - horizon) / (h - horizon), 0.08, 1)
            trans = np.exp(-self._fog_beta / ground)[:, None, None]
            vis = vis * trans + self._airlight * (1.0 - trans)
        self._bg_vis = vis.astype(np.float32)
        self._bg_temp = temp

        if self.condition == "glare":
            # A low sun or oncoming headlight: a broad bloom that saturates a disc of the frame,
            # plus a horizontal lens streak and a veil that lowers contrast everywhere.
            bx, by = self._bloom_centre[0] * w, self._bloom_centre[1] * h
            sigma = 0.17 * max(h, w)
            bloom = 2.6 * np.outer(_gaussian_1d(h, by, sigma), _gaussian_1d(w, bx, sigma))
            bloom += 0.6 * np.outer(_gaussian_1d(h, by, 0.02 * h),
                                    _gaussian_1d(w, bx, 0.6 * w))
            bloom += 0.12
            tinted = bloom[:, :, None] * np.array([1.0, 0.95, 0.85], np.float32)
            self._bloom: np.ndarray | None = tinted.astype(np.float32)
        else:
            self._bloom = None

    def _make_actors(self, rng: np.random.Generator) -> list[_Actor]:
        h, w = self.height, self.width
        horizon, road_top = self._horizon, self._road_top
        span = h - horizon
        actors: list[_Actor] = []
        amb = self._ambient
        shirts = [(0.15, 0.15, 0.2), (0.35, 0.1, 0.1), (0.1, 0.18, 0.3), (0.4, 0.35, 0.3),
                  (0.22, 0.22, 0.2), (0.55, 0.5, 0.4), (0.1, 0.25, 0.12)]
        for _ in range(self.n_people):
            ground_y = float(horizon + rng.uniform(0.2, 0.95) * span)
            scale = (ground_y - horizon) / span
            direction = 1 if rng.random() < 0.5 else -1
            shirt = shirts[int(rng.integers(len(shirts)))]
            trousers = tuple(float(c) for c in rng.uniform(0.05, 0.3) * np.ones(3))
            skin = tuple(float(c) for c in np.array([0.8, 0.6, 0.45]) * rng.uniform(0.4, 1.0))
            actors.append(_Actor(
                kind="person",
                x0=float(rng.uniform(0, w)),
                ground_y=ground_y,
                vx=direction * float(rng.uniform(0.04, 0.09)) * w * scale,
                height=max(8.0, 0.7 * h * scale),
                direction=direction,
                phase=float(rng.uniform(0, 2 * math.pi)),
                colors=(shirt, trousers, skin),
                # Clothing insulates, so only the face and hands show near skin temperature.
                temps=(float(rng.uniform(29, 31.5)), float(rng.uniform(27, 30)),
                       float(rng.uniform(33.5, 35.0))),
            ))
        paints = [(0.85, 0.85, 0.85), (0.6, 0.62, 0.65), (0.55, 0.08, 0.08), (0.1, 0.15, 0.4),
                  (0.08, 0.08, 0.08), (0.3, 0.35, 0.3)]
        for _ in range(self.n_vehicles):
            ground_y = float(road_top + rng.uniform(0.25, 1.0) * (h - road_top))
            scale = (ground_y - horizon) / span
            direction = 1 if rng.random() < 0.5 else -1
            actors.append(_Actor(
                kind="vehicle",
                x0=float(rng.uniform(0, w)),
                ground_y=ground_y,
                vx=direction * float(rng.uniform(0.15, 0.3)) * w * scale,
                height=max(8.0, 0.42 * h * scale),
                direction=direction,
                phase=0.0,
                colors=(paints[int(rng.integers(len(paints)))],),
                # body, engine bay, tyres and brakes, exhaust
                temps=(amb + float(rng.uniform(3, 6)), amb + float(rng.uniform(28, 38)),
                       amb + float(rng.uniform(14, 22)), amb + float(rng.uniform(45, 60))),
            ))
        # Painter's order: far (small ground_y) first so near actors occlude them.
        actors.sort(key=lambda a: a.ground_y)
        return actors

    # ------------------------------------------------------------------ rendering

    def _appearance(self, color: Sequence[float], x: float, ground_y: float,
                    emissive: bool = False) -> tuple[float, float, float]:
        """Colour of an actor's part as seen under this condition (lighting, fog)."""
        c = np.asarray(color, dtype=np.float32)
        if not emissive:
            xi = min(max(int(x), 0), self.width - 1)
            yi = min(max(int(ground_y) - 1, 0), self.height - 1)
            c = c * self._illum[yi, xi]
        if self.condition == "fog":
            scale = max((ground_y - self._horizon) / (self.height - self._horizon), 0.08)
            trans = math.exp(-self._fog_beta / scale)
            c = c * trans + self._airlight * (1.0 - trans)
        return float(c[0]), float(c[1]), float(c[2])

    def _position(self, actor: _Actor, t: float) -> float:
        """Centre x at time ``t``; actors leaving one side re-enter from the other."""
        margin = 1.3 * actor.height * (1.3 if actor.kind == "vehicle" else 0.3)
        period = self.width + 2 * margin
        return (actor.x0 + actor.vx * t + margin) % period - margin

    def render(self, t: float = 0.0) -> SyntheticPair:
        """Render the scene at time ``t`` (seconds).

        Args:
            t: time in seconds; actors move with constant velocity, so successive times give a
                consistent video (e.g. ``t = i / 30`` for a 30 Hz stream).

        Returns:
            A :class:`SyntheticPair`; the same generator arguments and ``t`` give identical
            images.
        """
        t = float(t)
        h, w = self.height, self.width
        vis = self._bg_vis.copy()
        temp = self._bg_temp.copy()
        mask = np.zeros((h, w), dtype=np.uint8)
        for actor in self._actors:
            x = self._position(actor, t)
            if actor.kind == "person":
                self._draw_person(vis, temp, mask, actor, x, t)
            else:
                self._draw_vehicle(vis, temp, mask, actor, x)

        # Per-frame noise seeded by the exact bits of t: deterministic, but new every frame.
        t_bits = int(np.array(t, dtype=np.float64).view(np.uint64))
        rng = np.random.default_rng([self.seed, CONDITIONS.index(self.condition), t_bits])

        ir = self._finish_thermal(temp, rng)
        out_vis = self._finish_visible(vis, rng)
        name = f"{self.condition}_seed{self.seed}_t{int(round(t * 1000)):07d}ms"
        return SyntheticPair(ir=ir, vis=out_vis, name=name, warm_mask=mask > 0)

    def _finish_thermal(self, temp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = self.height, self.width
        # Thermal optics and detectors are soft: blur scales with the image size.
        sigma = 0.6 + min(h, w) / 400.0
        temp = np.asarray(cv2.GaussianBlur(temp, (0, 0), sigma))
        if self.condition == "fog":
            # Long-wave infrared sees through fog far better than visible light; a little
            # contrast is still lost.
            temp = 0.9 * temp + 0.1 * float(temp.mean())
        temp += 0.12 * rng.standard_normal((h, w), dtype=np.float32)
        temp += self._column_noise[None, :]
        if self.thermal_bits == 16:
            counts = _COUNTS_AT_0C + _COUNTS_PER_K * temp
            return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
        scaled = (temp - self._t_lo) * (255.0 / (self._t_hi - self._t_lo))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def _finish_visible(self, vis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = self.height, self.width
        if self._bloom is not None:
            vis += self._bloom
        vis = np.asarray(cv2.GaussianBlur(vis, (0, 0), 0.6))
        vis += self._vis_noise * rng.standard_normal((h, w, 3), dtype=np.float32)
        vis *= 255.0
        vis += 0.5
        np.clip(vis, 0.0, 255.0, out=vis)
        return vis.astype(np.uint8)

    @staticmethod
    def _paint(
        layers: tuple[np.ndarray, np.ndarray, np.ndarray],
        draw: Callable[[np.ndarray, Any], object],
        rgb: tuple[float, float, float],
        temperature: float,
        warm: bool = True,
    ) -> None:
        """Draw one shape into the visible, temperature and warm-mask layers."""
        vis, temp, mask = layers
        draw(vis, rgb)
        draw(temp, float(temperature))
        if warm:
            draw(mask, 255)

    def _draw_person(self, vis: np.ndarray, temp: np.ndarray, mask: np.ndarray, a: _Actor,
                     x: float, t: float) -> None:
        hgt, gy = a.height, a.ground_y
        shirt, trousers, skin = (self._appearance(c, x, gy) for c in a.colors)
        t_shirt, t_trousers, t_skin = a.temps
        layers = (vis, temp, mask)
        swing = 0.12 * hgt * math.sin(2 * math.pi * 1.8 * t + a.phase)
        leg_w = max(1, int(round(0.09 * hgt)))
        arm_w = max(1, int(round(0.055 * hgt)))
        hip = _pt(x, gy - 0.46 * hgt)
        shoulder = _pt(x, gy - 0.8 * hgt)

        def line(p1: tuple[int, int], p2: tuple[int, int], width: int) -> Callable:
            return lambda img, c: cv2.line(img, p1, p2, c, width, cv2.LINE_8, _SHIFT)

        for s in (swing, -swing):  # legs
            self._paint(layers, line(hip, _pt(x + s, gy - 0.02 * hgt), leg_w), trousers,
                        t_trousers)
        self._paint(  # torso
            layers,
            lambda img, c: cv2.ellipse(img, _pt(x, gy - 0.65 * hgt),
                                       (_ln(0.13 * hgt), _ln(0.21 * hgt)), 0, 0, 360, c, -1,
                                       cv2.LINE_8, _SHIFT),
            shirt, t_shirt,
        )
        for s in (swing, -swing):  # arms, swinging against the legs
            self._paint(layers, line(shoulder, _pt(x - 0.8 * s, gy - 0.5 * hgt), arm_w), shirt,
                        t_shirt + 1.0)
        self._paint(  # head
            layers,
            lambda img, c: cv2.circle(img, _pt(x + 0.01 * a.direction * hgt, gy - 0.91 * hgt),
                                      _ln(0.075 * hgt), c, -1, cv2.LINE_8, _SHIFT),
            skin, t_skin,
        )

    def _draw_vehicle(self, vis: np.ndarray, temp: np.ndarray, mask: np.ndarray, a: _Actor,
                      x: float) -> None:
        hgt, gy, d = a.height, a.ground_y, a.direction
        length = 2.3 * hgt
        t_body, t_engine, t_tyre, t_exhaust = a.temps
        layers = (vis, temp, mask)
        night = self.condition == "night"

        def fx(f: float) -> float:  # x at fraction f of the half length, towards the front
            return x + d * f * 0.5 * length

        def rect(x1: float, y1: float, x2: float, y2: float) -> Callable:
            p1, p2 = _pt(min(x1, x2), y1), _pt(max(x1, x2), y2)
            return lambda img, c: cv2.rectangle(img, p1, p2, c, -1, cv2.LINE_8, _SHIFT)

        def poly(points: list[tuple[float, float]]) -> Callable:
            pts = np.array([_pt(px, py) for px, py in points], dtype=np.int32)
            return lambda img, c: cv2.fillConvexPoly(img, pts, c, cv2.LINE_8, _SHIFT)

        def circle(cx: float, cy: float, r: float) -> Callable:
            return lambda img, c: cv2.circle(img, _pt(cx, cy), _ln(r), c, -1, cv2.LINE_8,
                                             _SHIFT)

        paint = self._appearance(a.colors[0], x, gy)
        glass = self._appearance((0.12, 0.14, 0.18) if night else (0.3, 0.36, 0.42), x, gy)
        cabin = [(fx(-0.75), gy - 0.6 * hgt), (fx(0.55), gy - 0.6 * hgt),
                 (fx(0.25), gy - hgt), (fx(-0.55), gy - hgt)]
        window = [(fx(-0.66), gy - 0.64 * hgt), (fx(0.46), gy - 0.64 * hgt),
                  (fx(0.2), gy - 0.93 * hgt), (fx(-0.5), gy - 0.93 * hgt)]
        self._paint(layers, poly(cabin), paint, t_body)
        # Glass reflects the cold sky in the long-wave infrared.
        self._paint(layers, poly(window), glass, self._ambient - 4.0)
        self._paint(layers, rect(fx(-1.0), gy - 0.62 * hgt, fx(1.0), gy - 0.17 * hgt), paint,
                    t_body)
        self._paint(layers, rect(fx(0.45), gy - 0.6 * hgt, fx(0.97), gy - 0.25 * hgt), paint,
                    t_engine)  # the bonnet looks like the body but is hot
        self._paint(layers, rect(fx(-0.02), gy - 0.55 * hgt, fx(0.0), gy - 0.2 * hgt),
                    self._appearance((0.05, 0.05, 0.05), x, gy), t_body)  # door gap
        tyre = self._appearance((0.04, 0.04, 0.04), x, gy)
        hub = self._appearance((0.55, 0.55, 0.55), x, gy)
        for f in (-0.6, 0.6):
            self._paint(layers, circle(fx(f), gy - 0.17 * hgt, 0.17 * hgt), tyre, t_tyre)
            self._paint(layers, circle(fx(f), gy - 0.17 * hgt, 0.07 * hgt), hub, t_tyre + 8.0)
        self._paint(layers, circle(fx(-1.0), gy - 0.2 * hgt, 0.05 * hgt),
                    self._appearance((0.1, 0.1, 0.1), x, gy), t_exhaust)
        # Lights: light sources at night, plain reflective plastic by day.
        head = self._appearance((1.0, 0.97, 0.85) if night else (0.8, 0.8, 0.75), x, gy,
                                emissive=night)
        tail = self._appearance((0.9, 0.1, 0.08) if night else (0.5, 0.05, 0.05), x, gy,
                                emissive=night)
        self._paint(layers, rect(fx(0.9), gy - 0.55 * hgt, fx(1.0), gy - 0.45 * hgt), head,
                    self._ambient + 12.0)
        self._paint(layers, rect(fx(-1.0), gy - 0.55 * hgt, fx(-0.93), gy - 0.45 * hgt), tail,
                    t_body)


def generate_pairs(
    n: int,
    seed: int = 0,
    height: int = 256,
    width: int = 320,
    conditions: Sequence[str] = ("night", "glare", "day", "fog"),
    thermal_bits: int = 8,
) -> list[SyntheticPair]:
    """Render ``n`` different scenes, cycling through ``conditions``.

    Args:
        n: number of pairs.
        seed: base seed; pair ``i`` uses its own scene derived from ``(seed, i)``.
        height: image height.
        width: image width.
        conditions: visible-light conditions used in turn.
        thermal_bits: 8 or 16, see :class:`SceneGenerator`.

    Returns:
        ``n`` pairs named ``"<i:04d>_<condition>"`` (unique, so they can be written to one
        folder).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not conditions:
        raise ValueError("conditions must not be empty")
    pairs = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        condition = conditions[i % len(conditions)]
        gen = SceneGenerator(
            seed=int(rng.integers(2**31)),
            height=height,
            width=width,
            condition=condition,
            thermal_bits=thermal_bits,
            n_people=int(rng.integers(1, 6)),
            n_vehicles=int(rng.integers(0, 4)),
        )
        pair = gen.render(float(rng.uniform(0.0, 10.0)))
        pair.name = f"{i:04d}_{condition}"
        pairs.append(pair)
    return pairs


def write_pairs(pairs: Sequence[SyntheticPair], out_dir: str | PathLike[str]) -> tuple[Path, Path]:
    """Write pairs as ``out_dir/ir/<name>.png`` and ``out_dir/vi/<name>.png``.

    Args:
        pairs: pairs with unique names.
        out_dir: destination folder, created if needed.

    Returns:
        ``(ir_dir, vi_dir)``, ready for :func:`cldyn_ros.imaging.io.find_pairs`.
    """
    names = [p.name for p in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"pair names must be unique, duplicated: {duplicates}")
    out = Path(out_dir)
    ir_dir, vi_dir = out / "ir", out / "vi"
    ir_dir.mkdir(parents=True, exist_ok=True)
    vi_dir.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        write_image(ir_dir / f"{pair.name}.png", pair.ir)
        write_image(vi_dir / f"{pair.name}.png", pair.vis)
    return ir_dir, vi_dir
