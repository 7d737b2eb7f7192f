"""Reference formulas written as plain Python loops over floats, independent of the code under
test (no tensors, no vectorisation): what the hand-computed tests compare against."""
import math
from typing import List, Sequence


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def focal(logit: float, target: float, alpha: float, gamma: float) -> float:
    """Focal BCE of one point (Lin et al.): alpha weighs the positive side, 1 - alpha the
    negative one (alpha < 0: no weighting); a soft target mixes both sides linearly."""
    p = sigmoid(logit)
    pos = -math.log(p) * (1 - p) ** gamma
    neg = -math.log(1 - p) * p ** gamma
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return target * pos + (1 - target) * neg


def mean_focal(logits: Sequence[float], targets: Sequence[float], alpha=0.25, gamma=2.0):
    return sum(focal(x, t, alpha, gamma) for x, t in zip(logits, targets)) / len(logits)


def dice(probs: Sequence[float], targets: Sequence[float]) -> float:
    """1 - (2 sum p t + 1) / (sum p + sum t + 1)."""
    inter = sum(p * t for p, t in zip(probs, targets))
    return 1 - (2 * inter + 1) / (sum(probs) + sum(targets) + 1)


def softmax(row: Sequence[float]) -> List[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def cross_entropy(row: Sequence[float], cls: int) -> float:
    return -math.log(softmax(row)[cls])


def projection(mask_logits: Sequence[Sequence[float]], tx: Sequence[float],
               ty: Sequence[float]) -> float:
    """Eq. (3): dice of the column-wise max of sigmoid(mask) against the box's x-extent plus
    dice of the row-wise max against its y-extent."""
    probs = [[sigmoid(v) for v in row] for row in mask_logits]
    px = [max(row[j] for row in probs) for j in range(len(probs[0]))]
    py = [max(row) for row in probs]
    return dice(px, tx) + dice(py, ty)


def flat(t) -> List[float]:
    """A tensor's values as a flat list of Python floats."""
    return [float(v) for v in t.flatten().tolist()]
