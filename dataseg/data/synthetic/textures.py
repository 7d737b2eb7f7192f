"""Colours and textures of things and stuff: each kind has its own distribution, jittered per
instance, so that appearance helps recognition without making it a colour lookup (several kinds
share hues, e.g. ball / starfish / traffic cone are all orange-ish).
"""
import math

import cv2
import numpy as np


def low_freq_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a cells x cells grid upsampled bicubically to h x w."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) / 1.5, -1.5, 1.5)


def _jitter(rgb, rng, amount=25.0):
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _mix(a, b, t):
    t = t[..., None]
    return a * (1.0 - t) + b * t


# --------------------------------------------------------------------------------- things
# kind -> (main colour choices, secondary colour choices, pattern)
_THING_STYLE = {
    "car": ([(200, 30, 30), (30, 60, 190), (230, 230, 230), (40, 150, 60), (240, 200, 20)],
            [(20, 20, 20)], "gloss"),
    "ball": ([(240, 130, 20), (245, 245, 245)], [(30, 30, 30), (250, 250, 250)], "spots"),
    "donut": ([(180, 120, 60)], [(240, 130, 180), (110, 60, 30), (250, 250, 240)], "sprinkles"),
    "starfish": ([(235, 110, 60), (220, 70, 90)], [(250, 200, 150)], "spots"),
    "banana": ([(240, 215, 50)], [(110, 90, 30)], "noise"),
    "chair": ([(130, 80, 40), (90, 60, 35)], [(160, 110, 60)], "grain"),
    "person": ([(200, 40, 40), (40, 90, 200), (60, 160, 80), (230, 230, 60), (120, 60, 160)],
               [(230, 190, 160), (150, 100, 70), (90, 60, 40)], "shirt"),
    "kite": ([(230, 40, 120), (40, 200, 220), (250, 180, 20)],
             [(30, 30, 160), (250, 250, 250)], "flat"),
    "cone": ([(250, 110, 20)], [(250, 250, 250)], "flat"),
    "sheep": ([(235, 232, 220)], [(45, 40, 38)], "fluffy"),
    "umbrella": ([(200, 30, 60), (30, 30, 30), (40, 80, 200), (250, 210, 30)],
                 [(60, 50, 40)], "radial"),
    "horseshoe": ([(150, 150, 160)], [(60, 60, 60)], "metal"),
}


def paint_thing(kind: str, u: np.ndarray, v: np.ndarray, part: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """RGB float colours of one instance over its window (u, v object-local coordinates)."""
    mains, parts, pattern = _THING_STYLE[kind]
    main = _jitter(mains[rng.integers(len(mains))], rng)
    sec = _jitter(parts[rng.integers(len(parts))], rng, 15.0)
    shape = u.shape
    if pattern == "spots":
        cx, cy = rng.uniform(-1, 1, 5), rng.uniform(-1, 1, 5)
        d = np.min([(u - x) ** 2 + (v - y) ** 2 for x, y in zip(cx, cy)], axis=0)
        t = (d < 0.06).astype(np.float32) * 0.6
    elif pattern == "sprinkles":
        t = (rng.random(shape) < 0.08).astype(np.float32) * 0.8
        main = _mix(main[None, None], _jitter((250, 80, 160), rng, 40)[None, None], t)
        t = np.zeros(shape, np.float32)
    elif pattern == "grain":
        t = 0.5 + 0.5 * np.sin(v * 25.0 + 2.0 * np.sin(u * 6.0))
        t = t.astype(np.float32) * 0.35
    elif pattern == "gloss":
        t = np.clip(0.6 - (v + 0.7) * 0.6, 0, 1).astype(np.float32) * 0.4
        sec_hi = np.full(3, 255.0, np.float32)
        main = _mix(main[None, None], sec_hi[None, None], t)
        t = np.zeros(shape, np.float32)
    elif pattern == "shirt":
        pants = _jitter((40, 40, 70), rng, 20)
        main = _mix(main[None, None], pants[None, None], (v > 0.25).astype(np.float32))
        t = np.zeros(shape, np.float32)
    elif pattern == "fluffy":
        t = (rng.random(shape) * 0.25).astype(np.float32)
        sec_soft = np.full(3, 170.0, np.float32)
        main = _mix(main[None, None], sec_soft[None, None], t)
        t = np.zeros(shape, np.float32)
    elif pattern == "radial":
        t = (np.sin(np.arctan2(v, u) * 8.0) > 0).astype(np.float32) * 0.45
        sec_w = np.full(3, 245.0, np.float32)
        main = _mix(main[None, None], sec_w[None, None], t)
        t = np.zeros(shape, np.float32)
    elif pattern == "metal":
        t = (0.5 + 0.5 * np.sin((u + v) * 3.0)).astype(np.float32) * 0.5
        sec_w = np.full(3, 230.0, np.float32)
        main = _mix(main[None, None], sec_w[None, None], t)
        t = np.zeros(shape, np.float32)
    elif pattern == "noise":
        t = np.clip(rng.standard_normal(shape) * 0.1 + 0.5 * np.clip(np.abs(u) - 0.6, 0, 1),
                    0, 1).astype(np.float32)
    else:  # flat
        t = np.zeros(shape, np.float32)
    main = np.broadcast_to(main, shape + (3,)) if main.ndim == 1 else main
    rgb = _mix(main, np.broadcast_to(sec, shape + (3,)), t)
    rgb = np.where(part[..., None], sec, rgb)
    shade = 1.0 - 0.15 * np.clip(u * 0.5 + v * 0.5, -1, 1)  # light from the top-left
    return rgb * shade[..., None].astype(np.float32)


# ---------------------------------------------------------------------------------- stuff
def paint_stuff(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """RGB float texture of a stuff kind over the whole image (the region mask selects it)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    fine = rng.standard_normal((h, w)).astype(np.float32)
    if kind == "sky":
        top, low = _jitter((60, 120, 215), rng, 20), _jitter((170, 205, 240), rng, 15)
        rgb = _mix(top[None, None], low[None, None], np.clip(yy * 1.6, 0, 1))
        clouds = np.clip(low_freq_noise(rng, h, w, 5) * 1.5 - 0.4, 0, 1)
        rgb = _mix(rgb, np.full(3, 245.0, np.float32)[None, None], clouds * 0.85)
        return rgb + fine[..., None] * 2.0
    if kind == "grass":
        base = _jitter((70, 150, 50), rng, 20)
        streak = cv2.resize(rng.standard_normal((max(h // 8, 2), w)).astype(np.float32), (w, h))
        blotch = low_freq_noise(rng, h, w, 4)
        return (base[None, None] * (1.0 + 0.12 * streak + 0.12 * blotch)[..., None]
                + fine[..., None] * 8.0)
    if kind == "water":
        base = _jitter((40, 100, 170), rng, 20)
        f, ph = rng.uniform(30, 50), rng.uniform(0, 2 * math.pi)
        wave = np.sin(yy * f + 0.8 * np.sin(xx * 9.0 + ph))
        rgb = base[None, None] * (1.0 + 0.13 * wave + 0.1 * low_freq_noise(rng, h, w, 3))[..., None]
        return rgb + fine[..., None] * 3.0
    if kind == "road":
        base = _jitter((85, 85, 90), rng, 15)
        rgb = np.broadcast_to(base, (h, w, 3)) + fine[..., None] * 9.0
        lane_y = rng.uniform(0.2, 0.9)
        lane = (np.abs(yy - lane_y) < 0.015) & (np.sin(xx * 40.0) > 0)
        return np.where(lane[..., None], _jitter((235, 225, 180), rng, 15), rgb)
    if kind == "wall":
        base = _jitter((170, 90, 70), rng, 30)
        bh = rng.uniform(0.06, 0.1)
        row = np.floor(yy / bh)
        bx = (xx + 0.5 * (row % 2) * bh * 2.2) / (bh * 2.2)
        mortar = ((yy / bh) % 1.0 < 0.14) | (bx % 1.0 < 0.07)
        tint = (np.sin(row * 12.9898 + np.floor(bx) * 78.233) * 43758.5) % 1.0
        rgb = base[None, None] * (0.88 + 0.24 * tint)[..., None] + fine[..., None] * 4.0
        return np.where(mortar[..., None], _jitter((200, 195, 185), rng, 10), rgb)
    if kind == "sand":
        base = _jitter((215, 190, 130), rng, 20)
        ripple = np.sin((yy + 0.1 * low_freq_noise(rng, h, w, 3)) * rng.uniform(40, 60))
        return base[None, None] * (1.0 + 0.06 * ripple)[..., None] + fine[..., None] * 10.0
    if kind == "snow":
        base = _jitter((238, 242, 250), rng, 8)
        shadow = np.clip(low_freq_noise(rng, h, w, 4), 0, 1)[..., None]
        return _mix(base[None, None], np.array([170, 185, 220], np.float32)[None, None],
                    shadow[..., 0] * 0.6) + fine[..., None] * 3.0
    raise KeyError(f"no texture for stuff kind {kind!r}")
