"""Silhouettes of the world's thing kinds, none of them a rectangle, so that a box is not a mask.

Each shape is evaluated on object-local coordinates (u, v) in about [-1, 1] (v points down) and
returns (mask, part): ``part`` marks a secondary region (wheels, head, handle, icing) that the
texture paints differently, which makes kinds distinctive beyond their outline.
"""
import math
from typing import Callable, Dict, Tuple

import numpy as np

ShapeFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], Tuple[np.ndarray, np.ndarray]]


def _disk(u, v, cx=0.0, cy=0.0, r=1.0):
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def _rect(u, v, x0, x1, y0, y1):
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def car(u, v, rng):
    body = _rect(u, v, -1.0, 1.0, -0.25, 0.35) & ~(_rect(u, v, 0.85, 1.0, -0.25, -0.1))
    top = rng.uniform(0.35, 0.55)
    cabin = (v >= -0.75) & (v < -0.25) & (np.abs(u + 0.1) <= top + (v + 0.75) * 0.5)
    wheels = _disk(u, v, -0.55, 0.38, 0.27) | _disk(u, v, 0.55, 0.38, 0.27)
    return body | cabin | wheels, wheels


def ball(u, v, rng):
    m = _disk(u, v)
    seam = np.abs(np.sin(3.0 * u + rng.uniform(0, math.pi)) * 0.5 - v) < 0.12
    return m, m & seam


def donut(u, v, rng):
    rho = np.sqrt(u * u + v * v)
    inner = rng.uniform(0.3, 0.45)
    m = (rho <= 1.0) & (rho >= inner)
    icing = m & (rho >= inner + 0.08) & (rho <= 0.88) & (np.sin(9 * np.arctan2(v, u)) > -0.7)
    return m, icing


def starfish(u, v, rng):
    rho, phi = np.sqrt(u * u + v * v), np.arctan2(v, u)
    inner = rng.uniform(0.35, 0.5)
    t = (phi * 5 / (2 * math.pi)) % 1.0
    radius = inner + (1.0 - inner) * np.abs(1.0 - 2.0 * t) ** 1.5
    m = rho <= radius
    return m, m & (rho < inner * 0.6)


def banana(u, v, rng):
    off = rng.uniform(0.35, 0.55)
    m = _disk(u, v) & ~_disk(u, v, off, -off * 0.5, 0.85)
    tips = m & ((u * u + v * v) > 0.8) & (v < 0.2)
    return m, tips


def chair(u, v, rng):
    seat_y = rng.uniform(-0.05, 0.15)
    back = _rect(u, v, -0.7, -0.42, -1.0, 1.0)
    seat = _rect(u, v, -0.7, 0.7, seat_y, seat_y + 0.28)
    leg = _rect(u, v, 0.42, 0.7, seat_y, 1.0)
    return back | seat | leg, seat


def person(u, v, rng):
    head = _disk(u, v, 0.0, -0.75, 0.23)
    torso = (u / 0.38) ** 2 + ((v + 0.1) / 0.45) ** 2 <= 1.0
    spread = rng.uniform(0.05, 0.2)
    legs = (_rect(u, v, -0.3 - spread, -0.05, 0.2, 1.0) | _rect(u, v, 0.05, 0.3 + spread, 0.2, 1.0))
    return head | torso | legs, head


def kite(u, v, rng):
    w = rng.uniform(0.5, 0.75)
    m = np.abs(u) / w + np.abs(v + 0.2) / 0.8 <= 1.0
    return m, m & ((u > 0) == (v > -0.2))


def cone(u, v, rng):
    tri = (v >= -1.0) & (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.33)
    base = _rect(u, v, -0.8, 0.8, 0.8, 1.0)
    m = tri | base
    stripes = tri & (np.sin(v * rng.uniform(9, 12)) > 0.4)
    return m, stripes


def sheep(u, v, rng):
    phi = np.arctan2(v, u)
    rho = np.sqrt((u / 0.95) ** 2 + (v / 0.7) ** 2)
    a = rng.uniform(0, 2 * math.pi)
    body = rho <= 1.0 + 0.1 * np.sin(9 * phi + a)
    head = ((u - 0.85) / 0.25) ** 2 + ((v + 0.2) / 0.3) ** 2 <= 1.0
    legs = _rect(u, v, -0.6, -0.45, 0.5, 1.0) | _rect(u, v, 0.35, 0.5, 0.5, 1.0)
    dark = head | (legs & ~body)
    return body | head | legs, dark


def umbrella(u, v, rng):
    canopy = _disk(u, v, 0.0, 0.0, 1.0) & (v <= 0.0) & (v >= -1.0)
    scallop = (v > -0.12) & (np.cos(u * 4 * math.pi) < 0.0)
    handle = _rect(u, v, -0.06, 0.06, 0.0, 0.85)
    hook = (np.abs(np.sqrt((u + 0.15) ** 2 + (v - 0.85) ** 2) - 0.15) < 0.06) & (v > 0.85)
    stick = handle | hook
    return (canopy & ~scallop) | stick, stick


def horseshoe(u, v, rng):
    rho = np.sqrt(u * u + v * v)
    ring = (rho <= 1.0) & (rho >= rng.uniform(0.5, 0.62))
    gap = (v > 0.1) & (np.abs(u) < 0.45)
    m = ring & ~gap
    nails = m & (np.abs(rho - 0.8) < 0.06) & (np.sin(np.arctan2(v, u) * 8) > 0.6)
    return m, nails


SHAPES: Dict[str, ShapeFn] = {
    "car": car, "ball": ball, "donut": donut, "starfish": starfish, "banana": banana,
    "chair": chair, "person": person, "kite": kite, "cone": cone, "sheep": sheep,
    "umbrella": umbrella, "horseshoe": horseshoe,
}

# Kinds that stay roughly upright (max rotation in radians) and their width/height aspect.
UPRIGHT = {"car": 0.15, "person": 0.15, "chair": 0.2, "cone": 0.15, "umbrella": 0.3,
           "sheep": 0.15}
ASPECT = {"car": 1.6, "person": 0.55, "chair": 0.8, "cone": 0.7, "sheep": 1.3, "kite": 0.8}
