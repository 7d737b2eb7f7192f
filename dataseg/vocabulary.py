"""The vocabulary: the classes a DaTaSeg model segments, as ONE immutable type read by ONE reader.

A ``Vocabulary`` is the class names with their synonyms (the first name of a class is its name,
the one shown and evaluated), a thing/stuff flag per class, optional dataset ids and colours, and
where it came from (``source``: "dataset", "file", "typed" or "list"; ``origin``: the dataset
name, the file path or the typed text). Its ``key`` is a stable hash of the classes and flags;
the text-embedding cache (``dataseg.text``) keys its entries by the encoder settings and the
classes, so the same classes read from anywhere hit the same cache entry. This module imports
nothing of the project (``tests/test_vocabulary.py`` checks it).

Vocabulary syntax (every entry point reads it here: datasets files' ``class_names`` /
``categories``, the builtin names files, ``python -m dataseg.text --names/--names-file``,
``demo/demo.py`` and ``tools/export_model.py`` ``--vocab/--vocab-file``,
``DaTaSegPredictor(vocabulary=)``, the web demo's vocabulary field,
``MODEL.DATASEG.TEST.VOCABULARY_FILE/_CLASSES``)::

    # a comment line; blank lines are skipped
    car | automobile          one class: synonyms separated by '|' ...
    wall, brick wall          ... or by ',' (ADE's official names: "wall, brick wall")
    grass | lawn : stuff      ':stuff' marks a stuff class, ':thing' a thing
    person

- **Classes** are separated by new lines (a file: one class a line) or by ``;`` (a typed line:
  ``car|automobile; wall, brick wall; grass|lawn:stuff; person``). A typed line with ``,`` but
  no ``;`` is refused with a line saying what to write: ``,`` separated classes there before.
  (One class with ``,`` synonyms typed alone: end it with ``;``, or use ``|``.)
- **Synonyms** of a class are separated by ``|`` or ``,``; the first is the class name. Names
  are stripped; a name cannot contain ``|``, ``,``, ``;`` or ``:``, nor start with ``#``.
- **Marks**: ``:stuff`` (amorphous, one segment per class in panoptic output) or ``:thing`` at
  the end of a class; unmarked classes are things. A vocabulary without any mark says nothing
  about thing/stuff (``things_given`` False): a semantic dataset's classes are then stuff.
- **json** files (``.json``): a list whose items are a class as above (a string), a list of
  synonyms, or a category dict ``{"name", "synonyms"?, "isthing"?, "id"?, "color"?}``; or an
  object with such a ``categories`` list (a COCO json).
- **Duplicates**: two classes may not share a name (the first name, compared case-insensitively):
  ``classes.txt: class name 'quokka' twice: line 3 and line 7``. Synonyms may repeat another
  class's synonym (ADE's official names share "screen", "pot", ...).
"""
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

__all__ = ["Vocabulary", "VocabularyError", "parse_vocabulary", "read_vocabulary",
           "vocabulary_from_items", "vocabulary_from_categories", "as_vocabulary"]

SOURCES = ("dataset", "file", "typed", "list")
STUFF_MARK, THING_MARK = "stuff", "thing"


class VocabularyError(ValueError):
    """A vocabulary that cannot be used; the message (one line) names where and what."""


@dataclass(frozen=True)
class Vocabulary:
    """Classes in contiguous-id order: synonyms (first = the class name) and thing flags."""

    class_synonyms: Tuple[Tuple[str, ...], ...]
    is_thing: Tuple[bool, ...]
    ids: Optional[Tuple[int, ...]] = None
    colors: Optional[Tuple[Tuple[int, int, int], ...]] = None
    source: str = "list"
    origin: str = ""
    # False when no thing/stuff flag was given (all classes unmarked): the user decides
    things_given: bool = field(default=True, compare=False)

    def __post_init__(self):
        where = self.where()
        if isinstance(self.class_synonyms, str) or not self.class_synonyms:
            raise VocabularyError(f"{where}: the vocabulary is empty (no class names)")
        for k, names in enumerate(self.class_synonyms):
            names = [names] if isinstance(names, str) else names
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise VocabularyError(f"{where}: class {k} must be a non-empty list of non-empty "
                                      f"names, got {names!r}")
        syns = tuple(((s.strip(),) if isinstance(s, str) else tuple(n.strip() for n in s))
                     for s in self.class_synonyms)
        _check_duplicates([s[0] for s in syns], [f"class {k}" for k in range(len(syns))], where)
        thing = tuple(bool(t) for t in self.is_thing)
        if len(thing) != len(syns):
            raise VocabularyError(f"{where}: {len(thing)} thing flags for {len(syns)} classes")
        for name, value in (("ids", self.ids), ("colors", self.colors)):
            if value is not None and len(value) != len(syns):
                raise VocabularyError(f"{where}: {len(value)} {name} for {len(syns)} classes")
        if self.source not in SOURCES:
            raise VocabularyError(f"{where}: source {self.source!r} is not one of {SOURCES}")
        object.__setattr__(self, "class_synonyms", syns)
        object.__setattr__(self, "is_thing", thing)
        if self.ids is not None:
            object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        if self.colors is not None:
            object.__setattr__(self, "colors", tuple(tuple(int(c) for c in rgb)
                                                     for rgb in self.colors))

    def where(self) -> str:
        """How messages name this vocabulary: "dataset 'x'", the file, or the typed text."""
        if self.source == "dataset":
            return f"dataset '{self.origin}'"
        if self.source == "typed":
            return f"vocabulary {self.origin!r}"
        return self.origin or "vocabulary"

    @property
    def dataset(self) -> Optional[str]:
        """The registered dataset this vocabulary is, else None."""
        return self.origin if self.source == "dataset" else None

    @property
    def class_names(self) -> List[str]:
        return [s[0] for s in self.class_synonyms]

    def __len__(self) -> int:
        return len(self.class_synonyms)

    @property
    def key(self) -> str:
        """A short stable hash of the classes and thing flags (not of where they came from)."""
        payload = json.dumps([[list(s) for s in self.class_synonyms], list(self.is_thing)],
                             ensure_ascii=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def with_things(self, is_thing: Sequence[bool]) -> "Vocabulary":
        return replace(self, is_thing=tuple(bool(t) for t in is_thing), things_given=True)

    def things_or(self, default_thing: bool) -> "Vocabulary":
        """This vocabulary, or all classes thing (stuff) when no flag was given."""
        if self.things_given:
            return self
        return self.with_things([default_thing] * len(self))

    def with_stuff(self, names: Iterable[str]) -> "Vocabulary":
        """Also marks the classes named (any synonym, case-insensitively) as stuff."""
        lookup = {n.lower(): k for k, syns in enumerate(self.class_synonyms) for n in syns}
        things = list(self.is_thing)
        for name in names:
            k = lookup.get(str(name).strip().lower())
            if k is None:
                raise VocabularyError(f"{self.where()}: stuff name {name!r} is not a class of "
                                      f"{self.class_names}")
            things[k] = False
        return self.with_things(things)

    def categories(self) -> List[dict]:
        """COCO-style category dicts (``dataseg.data.register``'s format); ids 0.. if none."""
        ids = self.ids if self.ids is not None else range(len(self))
        out = []
        for k, (cid, syns, thing) in enumerate(zip(ids, self.class_synonyms, self.is_thing)):
            c = {"id": cid, "name": syns[0], "synonyms": list(syns[1:]), "isthing": int(thing)}
            if self.colors is not None:
                c["color"] = list(self.colors[k])
            out.append(c)
        return out

    def as_json(self) -> List[dict]:
        """``[{"name", "synonyms", "isthing"}]`` (the web demo's answer)."""
        return [{"name": s[0], "synonyms": list(s), "isthing": bool(t)}
                for s, t in zip(self.class_synonyms, self.is_thing)]


def _check_duplicates(names: Sequence[str], positions: Sequence[str], where: str) -> None:
    """The one duplicate rule: no two classes share a name (case-insensitively)."""
    seen = {}
    for k, (name, pos) in enumerate(zip(names, positions)):
        first = seen.setdefault(name.lower(), k)
        if first != k:
            raise VocabularyError(f"{where}: class name {name!r} twice: {positions[first]} and "
                                  f"{pos}")


def _parse_class(text: str, pos: str, where: str) -> Tuple[List[str], Optional[bool]]:
    """'sofa | couch, settee : stuff' -> (["sofa", "couch", "settee"], False); mark None when
    unmarked."""
    body, mark = text.strip(), None
    if ":" in body:
        body, _, word = body.rpartition(":")
        word = word.strip().lower()
        if word not in (STUFF_MARK, THING_MARK):
            raise VocabularyError(f"{where}: {pos}: unknown mark ':{word}' in {text.strip()!r} "
                                  f"(use ':{STUFF_MARK}' or ':{THING_MARK}')")
        mark = word == THING_MARK
    names = [n.strip() for n in body.replace(",", "|").split("|")]
    if not all(names):
        raise VocabularyError(f"{where}: {pos}: empty name in {text.strip()!r}")
    if names[0].startswith("#"):
        raise VocabularyError(f"{where}: {pos}: a name cannot start with '#' ({text.strip()!r})")
    return names, mark


def _build(rows, source: str, origin: str, where: str, ids=None, colors=None,
           things=None) -> Vocabulary:
    """rows: (position, names, mark or None). Unmarked classes are things."""
    if not rows:
        raise VocabularyError(f"{where}: the vocabulary is empty (no class names)")
    _check_duplicates([r[1][0] for r in rows], [r[0] for r in rows], where)
    marks = [r[2] for r in rows]
    given = things is not None or any(m is not None for m in marks)
    if things is None:
        things = [True if m is None else m for m in marks]
    return Vocabulary(tuple(tuple(r[1]) for r in rows), tuple(things), ids=ids, colors=colors,
                      source=source, origin=origin, things_given=given)


def _text_rows(text: str, where: str, line_label: str) -> list:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        parts = line.split(";")
        for j, part in enumerate(parts, 1):
            if not part.strip():
                continue
            pos = f"{line_label} {i}" if len(parts) == 1 else f"{line_label} {i} class {j}"
            rows.append((pos, *_parse_class(part, pos, where)))
    return rows


def parse_vocabulary(text: str, where: Optional[str] = None) -> Vocabulary:
    """A typed vocabulary (``"car|automobile; grass, lawn:stuff"``, or several lines)."""
    if not isinstance(text, str):
        raise VocabularyError(f"vocabulary text must be a str, got {type(text).__name__}")
    where = where or f"vocabulary {text.strip()!r}"
    one_line = text.strip()
    if not one_line.replace(",", "").replace(";", "").replace("|", "").strip():
        raise VocabularyError(f"{where}: the vocabulary is empty (no class names)")
    if "\n" not in one_line and ";" not in one_line and "," in one_line:
        raise VocabularyError(
            f"{where}: ',' separates synonyms, not classes; separate classes with ';' "
            f"(e.g. {'; '.join(p.strip() for p in one_line.split(','))!r}), or end one class "
            "with ';' to keep ',' between its synonyms")
    if "\n" in one_line:
        rows = _text_rows(text, where, "line")
    else:
        rows = [(f"class {j}", *_parse_class(p, f"class {j}", where))
                for j, p in enumerate(one_line.split(";"), 1) if p.strip()]
    return _build(rows, "typed", text.strip(), where)


def _item_rows(items: Sequence, where: str, label: str):
    """List items -> (rows, ids or None, colors or None)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise VocabularyError(f"{where}: must be a non-empty list of classes, got {items!r}")
    rows, ids, colors = [], [], []
    for k, item in enumerate(items):
        pos = f"{label}[{k}]"
        if isinstance(item, str):
            if ";" in item:
                raise VocabularyError(f"{where}: {pos} {item!r} holds several classes (';'); "
                                      "give one class per item")
            rows.append((pos, *_parse_class(item, pos, where)))
        elif isinstance(item, dict):
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                raise VocabularyError(f"{where}: {pos} has no 'name' (a non-empty string)")
            syns = [str(s).strip() for s in item.get("synonyms") or [] if str(s).strip()]
            names = [name.strip()] + [s for s in syns if s != name.strip()]
            mark = None if "isthing" not in item else bool(item["isthing"])
            rows.append((pos, names, mark))
            ids.append(item.get("id"))
            colors.append(item.get("color"))
        elif isinstance(item, Sequence) and item and all(
                isinstance(n, str) and n.strip() for n in item):
            rows.append((pos, [n.strip() for n in item], None))
        else:
            raise VocabularyError(f"{where}: {pos} must be a name, a list of synonyms or a "
                                  f"category dict, got {item!r}")
    dicts = len(ids) == len(rows)
    ids = tuple(ids) if dicts and all(i is not None for i in ids) else None
    colors = tuple(colors) if dicts and all(c is not None for c in colors) else None
    return rows, ids, colors


def vocabulary_from_items(items: Sequence, where: str = "vocabulary list", *,
                          source: str = "list", origin: str = "",
                          label: str = "item") -> Vocabulary:
    """A list of classes: each a string in the syntax above (one class), a list of synonyms or
    a category dict (``vocabulary_from_categories``)."""
    rows, ids, colors = _item_rows(items, where, label)
    return _build(rows, source, origin or where, where, ids=ids, colors=colors)


def vocabulary_from_categories(categories: Sequence[dict], where: str = "categories", *,
                               source: str = "list", origin: str = "") -> Vocabulary:
    """COCO-style category dicts (``id``, ``name``, optional ``synonyms``, ``isthing``,
    ``color``); a synonym equal to the name is dropped."""
    for k, c in enumerate(categories or []):
        if not isinstance(c, dict):
            raise VocabularyError(f"{where}: categories[{k}] must be a dict, got {c!r}")
    return vocabulary_from_items(categories, where, source=source, origin=origin,
                                 label="categories")


def read_vocabulary(path: Union[str, Path]) -> Vocabulary:
    """A vocabulary file: text in the syntax above, or ``.json`` (a list, or ``categories``)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VocabularyError(f"vocabulary file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VocabularyError(f"vocabulary file {path}: cannot be read ({e})") from e
    where = str(path)
    if path.suffix.lower() != ".json":
        return _build(_text_rows(text, where, "line"), "file", str(path), where)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise VocabularyError(f"{path}: not valid json ({e})") from e
    label = "item"
    if isinstance(data, dict):
        if not isinstance(data.get("categories"), list):
            raise VocabularyError(f"{path}: a json vocabulary is a list or has a 'categories' "
                                  "list")
        data, label = data["categories"], "categories"
    return vocabulary_from_items(data, where, source="file", origin=str(path), label=label)


def as_vocabulary(vocabulary, stuff: Optional[Sequence[str]] = None) -> Vocabulary:
    """A Vocabulary from a Vocabulary, typed text (``parse_vocabulary``) or a list of classes
    (``vocabulary_from_items``). ``stuff``: class names (any synonym) to mark stuff as well."""
    if isinstance(vocabulary, Vocabulary):
        vocab = vocabulary
    elif isinstance(vocabulary, str):
        vocab = parse_vocabulary(vocabulary)
    elif isinstance(vocabulary, Sequence):
        vocab = vocabulary_from_items(vocabulary)
    else:
        raise VocabularyError("vocabulary must be a str, a list of names / synonym lists, or a "
                              f"Vocabulary; got {type(vocabulary).__name__}")
    return vocab.with_stuff(stuff) if stuff else vocab
