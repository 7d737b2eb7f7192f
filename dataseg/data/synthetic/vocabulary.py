"""The synthetic world's visual kinds and the vocabulary each synthetic dataset names them with.

One world, several datasets: every dataset sees a subset of the same visual kinds but calls them by
its own names, so that a model with a text-embedding classifier has to rely on the names meaning
the same thing (e.g. "car" in the semantic set is "automobile" in the panoptic set). Names were
checked with all-MiniLM-L6-v2: each unseen-vocabulary name's nearest training name is its kind's.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

DOMAINS = ("sem", "pan", "box", "unseen")


@dataclass(frozen=True)
class Kind:
    """One visual kind of the world and its names in each dataset (None = absent there)."""

    key: str
    isthing: bool
    names: Dict[str, Optional[Tuple[str, ...]]] = field(default_factory=dict)

    def name_in(self, domain: str) -> Optional[Tuple[str, ...]]:
        return self.names.get(domain)


def _k(key, isthing, sem=None, pan=None, box=None, unseen=None) -> Kind:
    def tup(x):
        return None if x is None else (x,) if isinstance(x, str) else tuple(x)
    return Kind(key, isthing, {"sem": tup(sem), "pan": tup(pan), "box": tup(box),
                               "unseen": tup(unseen)})


# Order matters: it fixes category ids and contiguous ids of every dataset (bump
# generate.GENERATOR_VERSION when changing anything here).
KINDS: Tuple[Kind, ...] = (
    # things
    _k("car", True, sem="car", pan="automobile", box="car", unseen="vehicle"),
    _k("ball", True, sem="ball", pan="sports ball", box="ball", unseen="soccer ball"),
    _k("donut", True, sem="donut", pan="doughnut", box="donut", unseen="bagel"),
    _k("starfish", True, sem="starfish", pan="sea star"),
    _k("banana", True, sem="banana", pan="banana"),
    _k("chair", True, sem="chair", pan="seat", unseen="armchair"),
    _k("person", True, sem="person", pan="person", box="person", unseen="pedestrian"),
    _k("kite", True, pan="kite", box="kite"),
    _k("cone", True, pan="traffic cone", box="traffic cone"),
    _k("sheep", True, pan="sheep", box="sheep", unseen="lamb"),
    _k("umbrella", True, box="umbrella"),
    _k("horseshoe", True, box="horseshoe"),
    # stuff
    _k("sky", False, sem="sky", pan="sky", unseen="clouds"),
    _k("grass", False, sem="grass", pan="lawn", unseen="turf"),
    _k("water", False, sem="water", pan="sea", unseen="river"),
    _k("road", False, sem="road", pan="street", unseen="highway"),
    _k("wall", False, sem="wall", pan="wall", unseen="brick wall"),
    _k("sand", False, sem="sand", unseen="desert"),
    _k("snow", False, pan="snow"),
)

KIND_INDEX = {k.key: i for i, k in enumerate(KINDS)}
THING_KINDS = tuple(k.key for k in KINDS if k.isthing)
STUFF_KINDS = tuple(k.key for k in KINDS if not k.isthing)


@dataclass(frozen=True)
class DomainVocabulary:
    """The classes of one synthetic dataset: contiguous id i <-> world kind ``kinds[i]`` (the
    generator's table; registration hands ``categories()`` to ``dataseg.data.register``, which
    makes the one ``dataseg.vocabulary.Vocabulary`` of it)."""

    domain: str
    kinds: Tuple[str, ...]
    names: Tuple[Tuple[str, ...], ...]
    is_thing: Tuple[bool, ...]

    def category_ids(self) -> List[int]:
        """COCO-style dataset ids: things 1.., stuff 101.. (not contiguous, as in COCO)."""
        ids, t, s = [], 1, 101
        for thing in self.is_thing:
            ids.append(t if thing else s)
            t, s = (t + 1, s) if thing else (t, s + 1)
        return ids

    def categories(self) -> List[dict]:
        """``[{"id", "name", "isthing", "synonyms"}]`` in contiguous order (register.py format)."""
        return [{"id": cid, "name": names[0], "isthing": int(thing), "synonyms": list(names)}
                for cid, names, thing in zip(self.category_ids(), self.names, self.is_thing)]

    def index_of_kind(self) -> Dict[str, int]:
        return {k: i for i, k in enumerate(self.kinds)}


def vocabulary(domain: str, things_only: bool = False) -> DomainVocabulary:
    """The vocabulary of a dataset family; things first, then stuff (COCO order)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {DOMAINS}")
    kinds = [k for k in KINDS if k.name_in(domain) is not None and (k.isthing or not things_only)]
    return DomainVocabulary(domain, tuple(k.key for k in kinds),
                            tuple(k.name_in(domain) for k in kinds),
                            tuple(k.isthing for k in kinds))


def scene_kinds(domain: str) -> Tuple[List[str], List[str]]:
    """(thing kinds, stuff kinds) that appear in the scenes of a domain.

    Box-only data annotates things only but its backgrounds still use the whole world's stuff.
    """
    things = [k.key for k in KINDS if k.isthing and k.name_in(domain) is not None]
    if domain == "box":
        return things, list(STUFF_KINDS)
    return things, [k.key for k in KINDS if not k.isthing and k.name_in(domain) is not None]
