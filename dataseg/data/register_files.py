"""Datasets declared in YAML files (``DATASETS.REGISTER`` / ``train_net.py --datasets FILE``).

A datasets file is a YAML list; each entry has ``name``, ``task`` (semantic | panoptic |
instance | box) and the keyword arguments of the matching ``register_<task>_dataset`` function
of :mod:`dataseg.data.register`, with the same names::

    - name: my_ade_train
      task: semantic
      image_root: ade/images/training          # relative paths: against this file's folder
      sem_seg_root: ade/annotations/training
      class_names: ade/classes.txt             # inline list, text file or json
    - name: my_coco_val
      task: panoptic
      image_root: coco/val2017
      panoptic_root: coco/panoptic_val2017
      panoptic_json: coco/panoptic_val2017.json   # categories omitted: the json's own

Vocabularies (``class_names`` of semantic entries, ``categories`` of the others) are inline
lists or a path to a vocabulary file, both read by ``dataseg.vocabulary`` (the one syntax: one
class a line, synonyms by ``|`` or ``,``, ``:stuff`` marks, ``#`` comments; json lists or a
COCO ``categories`` list). For ``categories``, a text file's names are matched to the dataset
json's categories (the first name of a line to a json category ``name``), which give the ids
and thing/stuff flags (a ``:stuff``/``:thing`` mark overrides the json's flag). Two classes
with one name are refused, naming both positions.

``categories`` may be omitted for panoptic, instance and box entries: the ``categories`` of the
entry's json are used. Every problem is a :class:`DatasetFileError` naming the file, the entry
and the key. Registration is idempotent per file (the same file may be registered again in the
same process, e.g. by every rank or data-loader worker); a name already registered by anything
else is an error.
"""
import difflib
import inspect
import json
import logging
import mmap
import os
from typing import Dict, List, Sequence, Tuple

import yaml
from detectron2.data import DatasetCatalog

from ..vocabulary import Vocabulary, VocabularyError, read_vocabulary, vocabulary_from_items
from . import register as _register

__all__ = ["DatasetFileError", "register_dataset_files", "read_dataset_file",
           "RegisterDatasetFiles"]

logger = logging.getLogger(__name__)

TASK_FUNCTIONS = {
    "semantic": _register.register_semantic_dataset,
    "panoptic": _register.register_panoptic_dataset,
    "instance": _register.register_instance_dataset,
    "box": _register.register_box_dataset,
}
# Keys holding paths, resolved against the datasets file's folder.
PATH_KEYS = ("image_root", "sem_seg_root", "panoptic_root", "panoptic_json", "json_file")
# The json whose categories a panoptic/instance/box entry uses when ``categories`` is omitted.
JSON_KEY = {"panoptic": "panoptic_json", "instance": "json_file", "box": "json_file"}
VOCAB_KEY = {"semantic": "class_names", "panoptic": "categories", "instance": "categories",
             "box": "categories"}
# Above this size a json's categories are found by a scan instead of parsing the whole file.
_SMALL_JSON_BYTES = 64 << 20

# name -> absolute path of the datasets file that registered it (in this process).
_REGISTERED_FROM: Dict[str, str] = {}


class DatasetFileError(ValueError):
    """A datasets file, one of its entries or a file it names cannot be used."""


def _allowed_keys(func) -> Tuple[List[str], List[str]]:
    """(required, optional) keyword names of a register_* function (minus name/replace)."""
    required, optional = [], []
    for p in inspect.signature(func).parameters.values():
        if p.name in ("name", "replace") or p.kind is p.VAR_KEYWORD:
            continue
        (required if p.default is p.empty else optional).append(p.name)
    return required, optional


def json_categories(path: str) -> List[dict]:
    """The ``categories`` list of a COCO-style json, without parsing a large file whole.

    Files above 64 MB (Objects365: 1.7M boxes) are scanned for the ``"categories"`` key and only
    the list after it is decoded.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"json file not found: {path}")
    if os.path.getsize(path) < _SMALL_JSON_BYTES:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
            raise ValueError(f"{path} has no 'categories' list")
        return data["categories"]
    decoder = json.JSONDecoder()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        start = 0
        while True:
            k = mm.find(b'"categories"', start)
            if k < 0:
                raise ValueError(f"{path} has no 'categories' list")
            start = k + 1
            rest = mm[k + len(b'"categories"'):k + len(b'"categories"') + (32 << 20)]
            text = rest.decode("utf-8", errors="replace").lstrip()
            if not text.startswith(":"):
                continue
            try:
                cats, _ = decoder.raw_decode(text[1:].lstrip())
            except json.JSONDecodeError:
                continue
            if isinstance(cats, list) and all(isinstance(c, dict) and "id" in c for c in cats):
                return cats


class _Entry:
    """One entry of a datasets file, for error messages."""

    def __init__(self, path: str, index: int, raw):
        self.path, self.index, self.raw = path, index, raw
        self.name = raw.get("name") if isinstance(raw, dict) else None

    def where(self, key=None) -> str:
        who = f"entry {self.index}" + (f" ('{self.name}')" if isinstance(self.name, str) else "")
        return f"{self.path}: {who}" + (f", key '{key}'" if key else "")

    def error(self, key, message) -> DatasetFileError:
        return DatasetFileError(f"{self.where(key)}: {message}")

    def resolve(self, key, value) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a path (a non-empty string), got {value!r}")
        value = os.path.expanduser(value)
        return os.path.normpath(os.path.join(os.path.dirname(self.path), value))


def _vocabulary(entry: _Entry, key: str, value) -> Vocabulary:
    """The entry's vocabulary: an inline list or a vocabulary file (``dataseg.vocabulary``);
    a problem is an error naming the file, entry and key."""
    try:
        if isinstance(value, str):
            return read_vocabulary(entry.resolve(key, value))
        return vocabulary_from_items(value, entry.where(key), origin=entry.path, label=key)
    except VocabularyError as e:
        if isinstance(value, str):
            raise entry.error(key, str(e)) from e
        raise DatasetFileError(str(e)) from e


def _semantic_vocabulary(entry: _Entry, value, kwargs: dict) -> Vocabulary:
    vocab = _vocabulary(entry, "class_names", value)
    if "is_thing" in kwargs:
        return vocab
    return vocab.things_or(False)  # no mark, no is_thing: stuff, as register_semantic_dataset


def _categories(entry: _Entry, task: str, value, kwargs: dict) -> List[dict]:
    key = "categories"
    json_path = kwargs[JSON_KEY[task]]
    if value is None:
        try:
            cats = json_categories(json_path)
        except (OSError, ValueError) as e:
            raise entry.error(key, f"omitted, so the categories of {json_path} are used, but: "
                                   f"{e}") from e
        return cats
    if isinstance(value, str):
        vocab = _vocabulary(entry, key, value)
        if value.endswith(".json"):
            value = vocab.categories() if vocab.ids is not None else [
                {"name": n} for n in vocab.class_names]
        else:
            try:
                value = _categories_by_name(vocab, json_path)
            except (OSError, ValueError) as e:
                raise entry.error(key, str(e)) from e
    if not isinstance(value, list) or not value:
        raise entry.error(key, "must be a non-empty list of {id, name, isthing} dicts or a "
                               "vocabulary file path")
    for k, c in enumerate(value):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise entry.error(key, f"item {k} must be a dict with 'id' and 'name', got {c!r}")
    return value


def _entry_kwargs(entry: _Entry) -> Tuple[str, str, dict]:
    raw = entry.raw
    if not isinstance(raw, dict):
        raise entry.error(None, f"must be a mapping with 'name' and 'task', got {raw!r}")
    for key in ("name", "task"):
        if key not in raw:
            raise entry.error(key, "is missing")
    name, task = raw["name"], raw["task"]
    if not isinstance(name, str) or not name:
        raise entry.error("name", f"must be a non-empty string, got {name!r}")
    if task not in TASK_FUNCTIONS:
        raise entry.error("task", f"{task!r} is not one of {sorted(TASK_FUNCTIONS)}")
    required, optional = _allowed_keys(TASK_FUNCTIONS[task])
    allowed = set(required) | set(optional) | {"name", "task"}
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise entry.error(key, f"is not an option of a {task} dataset (options: "
                                   f"{', '.join(sorted(allowed))}){hint}")
    vocab_key = VOCAB_KEY[task]
    for key in required:
        if key not in raw and not (key == "categories" and task != "semantic"):
            raise entry.error(key, f"is missing (a {task} dataset needs "
                                   f"{', '.join(k for k in required if k != 'categories')})")
    kwargs = {}
    for key, value in raw.items():
        if key in ("name", "task", vocab_key):
            continue
        if key in PATH_KEYS:
            if value is None and key == "sem_seg_root":
                continue
            value = entry.resolve(key, value)
            must_be_dir = key.endswith("_root")
            if must_be_dir and not os.path.isdir(value):
                raise entry.error(key, f"folder not found: {value}")
            if not must_be_dir and not os.path.isfile(value):
                raise entry.error(key, f"file not found: {value}")
        kwargs[key] = value
    if task == "semantic":
        kwargs["class_names"] = _semantic_vocabulary(entry, raw[vocab_key], kwargs)
    else:
        kwargs["categories"] = _categories(entry, task, raw.get(vocab_key), kwargs)
    return name, task, kwargs


def read_dataset_file(path: str) -> List[Tuple[str, str, dict]]:
    """Parses and checks a datasets file: [(name, task, register kwargs, entry)] (no
    registration; ``entry`` locates it for error messages)."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise DatasetFileError(f"datasets file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            entries = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DatasetFileError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(entries, list) or not entries:
        raise DatasetFileError(f"{path}: a datasets file is a non-empty YAML list of entries "
                               "(- name: ..., task: ..., ...)")
    out, seen = [], {}
    for k, raw in enumerate(entries):
        entry = _Entry(path, k, raw)
        name, task, kwargs = _entry_kwargs(entry)
        if name in seen:
            raise entry.error("name", f"'{name}' is also the name of entry {seen[name]}")
        seen[name] = k
        out.append((name, task, kwargs, entry))
    return out


def register_dataset_files(paths: Sequence[str]) -> List[str]:
    """Registers every entry of the given datasets files; returns the dataset names.

    A file already registered in this process is registered again (its entries replaced);
    a name that something else registered (a builtin, another file) is an error.
    """
    names = []
    for path in paths:
        path = os.path.abspath(os.path.expanduser(str(path)))
        for name, task, kwargs, entry in read_dataset_file(path):
            owner = _REGISTERED_FROM.get(name)
            if owner is not None and owner != path:
                raise entry.error("name", f"dataset '{name}' is already declared in {owner}")
            if owner is None and name in DatasetCatalog.list():
                raise entry.error("name", f"dataset '{name}' is already registered (a builtin or "
                                          "a dataset registered in Python); choose another name")
            try:
                TASK_FUNCTIONS[task](name, replace=owner is not None, **kwargs)
            except (TypeError, ValueError) as e:
                raise entry.error(None, str(e)) from e
            _REGISTERED_FROM[name] = path
            names.append(name)
    return names


class RegisterDatasetFiles:
    """A picklable callable that registers datasets files (for data-loader workers started
    with "spawn", which do not inherit the parent's catalogs) and then calls ``then``."""

    def __init__(self, paths: Sequence[str], then=None):
        self.paths, self.then = list(paths), then

    def __call__(self, *args):
        missing = [p for p in self.paths if p not in set(_REGISTERED_FROM.values())]
        if missing:
            register_dataset_files(missing)
        if self.then is not None:
            return self.then(*args)
        return None


def _categories_by_name(vocab: Vocabulary, json_path: str) -> List[dict]:
    """The json's categories named by a text vocabulary (ids and flags from the json, names and
    synonyms from the file, marks from the file when it has any); a name the json lacks is an
    error with the closest matches."""
    try:
        own = json_categories(json_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"a text vocabulary takes its ids from the json's "
                         f"categories, but: {e}") from e
    by_name = {str(c.get("name", "")).lower(): c for c in own if isinstance(c, dict)}
    out = []
    for names, thing in zip(vocab.class_synonyms, vocab.is_thing):
        c = by_name.get(names[0].lower())
        if c is None:
            close = difflib.get_close_matches(names[0].lower(), list(by_name), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ValueError(f"{vocab.origin}: class '{names[0]}' is not a category of "
                             f"{json_path}{hint}")
        out.append(dict(c, name=names[0], synonyms=list(names[1:]),
                        **({"isthing": int(thing)} if vocab.things_given else {})))
    return out
