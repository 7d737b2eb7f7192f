"""Renders one scene: irregular stuff regions in the background, then things painted in depth
order (later ones occlude earlier ones), then camera-like noise.

The returned ground truth is what is *visible*: instance masks after occlusion and cropping by
the image border; fragments too small to annotate become void (as tiny crowd bits in COCO).
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from .shapes import ASPECT, SHAPES, UPRIGHT
from .textures import low_freq_noise, paint_stuff, paint_thing
from .vocabulary import KIND_INDEX

# Number of things per scene (inclusive range) per domain.
THINGS_PER_SCENE = {"sem": (2, 6), "pan": (3, 8), "box": (3, 9), "unseen": (2, 6)}
# Half-height of a thing as a fraction of the image side.
THING_SCALE = (0.08, 0.24)
# "crowded" preset: clusters of same-class things, each member touching the previous one
# (slight overlap, later ones in front), smaller things. Clusters per scene, members per
# cluster (inclusive ranges) and the half-height range.
CROWD_CLUSTERS = (2, 3)
CROWD_MEMBERS = (3, 6)
CROWD_SCALE = (0.06, 0.12)


@dataclass
class Instance:
    """A visible thing: its world kind and its visible mask (HxW bool)."""

    kind: str
    mask: np.ndarray


@dataclass
class Scene:
    """A rendered image (HxWx3 uint8 RGB) and its visible ground truth."""

    image: np.ndarray
    stuff_map: np.ndarray  # int16 world-kind index of the stuff under every pixel
    instances: List[Instance]
    void: np.ndarray  # bool: pixels of thing fragments too small to annotate

    def kind_map(self) -> np.ndarray:
        """World-kind index per visible pixel, -1 on void."""
        out = self.stuff_map.astype(np.int16).copy()
        for inst in self.instances:
            out[inst.mask] = KIND_INDEX[inst.kind]
        out[self.void] = -1
        return out


def _stuff_layout(kinds: Sequence[str], h: int, w: int, rng) -> np.ndarray:
    """Index into ``kinds`` per pixel: sky (if chosen) above a wavy horizon, the others as a
    Voronoi partition on noise-warped coordinates (irregular boundaries)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    ground = [i for i, k in enumerate(kinds) if k != "sky"]
    warp_x = low_freq_noise(rng, h, w, 4) * 0.12
    warp_y = low_freq_noise(rng, h, w, 4) * 0.12
    sky = "sky" in kinds
    y_lo = 0.45 if sky else 0.0
    seeds = np.stack([rng.uniform(0, 1, len(ground)), rng.uniform(y_lo, 1, len(ground))], 1)
    d = [(xx + warp_x - sx) ** 2 + (yy + warp_y - sy) ** 2 for sx, sy in seeds]
    labels = np.asarray(ground, np.int16)[np.argmin(d, axis=0)]
    if sky:
        cells = rng.standard_normal((1, 5)).astype(np.float32)
        wave = cv2.resize(cells, (w, 1), interpolation=cv2.INTER_CUBIC)[0] * 0.05
        horizon = rng.uniform(0.22, 0.5) + wave
        labels[yy < horizon[None, :]] = kinds.index("sky")
    return labels


def _place_thing(kind: str, size: int, rng, center=None, scale=THING_SCALE):
    """Draws pose and silhouette of one thing (at ``center`` (x, y) if given); returns
    (y0, x0, mask, u, v, part) or None."""
    hh = size * rng.uniform(*scale)
    hw = hh * ASPECT.get(kind, 1.0) * rng.uniform(0.85, 1.15)
    max_rot = UPRIGHT.get(kind, math.pi)
    theta = rng.uniform(-max_rot, max_rot)
    if center is None:
        cx, cy = rng.uniform(-0.05, 1.05) * size, rng.uniform(-0.05, 1.05) * size
    else:
        cx, cy = center
    reach = math.hypot(hh, hw) + 1.0
    x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)) + 1, size)
    y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)) + 1, size)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    if x1 <= x0 or y1 <= y0:
        return None
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    c, s = math.cos(theta), math.sin(theta)
    u = flip * (c * dx + s * dy) / hw
    v = (-s * dx + c * dy) / hh
    mask, part = SHAPES[kind](u, v, rng)
    return y0, x0, mask, u, v, part & mask


def _thing_plan(domain: str, things: Sequence[str], size: int, rng, preset: str):
    """Yields (kind, center or None, scale range) of each thing to paint, in depth order.
    A generator: draws interleave with the caller's, so the default world is unchanged."""
    if preset == "default":
        lo, hi = THINGS_PER_SCENE[domain]
        for _ in range(int(rng.integers(lo, hi + 1))):
            yield things[int(rng.integers(len(things)))], None, THING_SCALE
        return
    if preset != "crowded":
        raise ValueError(f"unknown synthetic preset {preset!r}")
    for _ in range(int(rng.integers(CROWD_CLUSTERS[0], CROWD_CLUSTERS[1] + 1))):
        kind = things[int(rng.integers(len(things)))]
        x, y = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size
        # a member's centre is one typical thing width from the previous one: they touch
        step = size * (CROWD_SCALE[0] + CROWD_SCALE[1]) * ASPECT.get(kind, 1.0) * 0.85
        for _ in range(int(rng.integers(CROWD_MEMBERS[0], CROWD_MEMBERS[1] + 1))):
            yield kind, (x, y), CROWD_SCALE
            angle = rng.uniform(0, 2 * math.pi)
            x = float(np.clip(x + step * math.cos(angle), 0, size))
            y = float(np.clip(y + step * math.sin(angle), 0, size))


def render_scene(domain: str, things: Sequence[str], stuff: Sequence[str], size: int,
                 rng: np.random.Generator, preset: str = "default") -> Scene:
    """Renders a ``size`` x ``size`` scene of the given thing and stuff kinds (``preset``:
    "default", or "crowded" for clusters of touching same-class things)."""
    n_stuff = int(rng.integers(2, min(4, len(stuff)) + 1))
    chosen = [stuff[i] for i in rng.choice(len(stuff), n_stuff, replace=False)]
    if chosen == ["sky"] * len(chosen):  # pragma: no cover - n_stuff >= 2 prevents it
        chosen.append(next(k for k in stuff if k != "sky"))
    layout = _stuff_layout(chosen, size, size, rng)
    canvas = np.zeros((size, size, 3), np.float32)
    for i, kind in enumerate(chosen):
        region = layout == i
        if region.any():
            canvas[region] = paint_stuff(kind, size, size, rng)[region]
    stuff_map = np.asarray([KIND_INDEX[k] for k in chosen], np.int16)[layout]

    ids = np.zeros((size, size), np.int32)
    kinds: List[str] = []
    for kind, center, scale in _thing_plan(domain, things, size, rng, preset):
        placed = _place_thing(kind, size, rng, center, scale)
        if placed is None or not placed[2].any():
            continue
        y0, x0, mask, u, v, part = placed
        colours = paint_thing(kind, u, v, part, rng)
        win = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        canvas[win][mask] = colours[mask]
        kinds.append(kind)
        ids[win][mask] = len(kinds)

    min_area = max(6, int(round(0.0006 * size * size)))
    instances, void = [], np.zeros((size, size), bool)
    for k, kind in enumerate(kinds, start=1):
        visible = ids == k
        area = int(visible.sum())
        if area >= min_area:
            instances.append(Instance(kind, visible))
        elif area:
            void |= visible

    contrast, brightness = rng.uniform(0.8, 1.15), rng.uniform(-20, 20)
    canvas = canvas * contrast + brightness + rng.normal(0, rng.uniform(2, 7), canvas.shape)
    if rng.random() < 0.5:
        canvas = cv2.GaussianBlur(canvas.astype(np.float32), (3, 3), 0.7)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image=image, stuff_map=stuff_map, instances=instances, void=void)


def scene_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
    """Independent, reproducible random stream of one image of one split."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(split_code), int(index)]))


def tight_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """COCO [x, y, w, h] covering exactly the mask's pixels."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
