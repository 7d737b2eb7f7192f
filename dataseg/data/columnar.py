"""Columnar, memory-mapped annotation cache for COCO box datasets (Objects365 scale).

A COCO box json (1.7M images and 25M boxes for Objects365) is parsed ONCE into one flat
binary file next to it (or under ``$DATASEG_CACHE_DIR``); every rank and loader worker then
memory-maps that file, so the machine holds one copy in its page cache instead of one parsed
copy per process. The dataset a loader gets is :class:`ColumnarBoxDataset`, a lazy
``torch.utils.data.Dataset`` / ``Sequence`` whose ``[i]`` builds the same record as
:func:`dataseg.data.loading.load_box_dicts` (``boxes`` float32 XYXY and ``box_classes`` int32
without the crowd boxes, ``file_name``, ``image_id``, ``height``, ``width``, ``dataset_name``).

File layout (little-endian; see docs/DESIGN.md "Columnar annotation cache")::

    b"DTSGCOL1" | uint64 header length | header json | pad to 64 |
    arrays, each 64-byte aligned | b"DTSGEND1" | uint64 crc32 of the header json

The header names the source json (absolute path, size, mtime in ns), the format version, the
total file size and each array's dtype, shape, offset and crc32. A cache whose source json
changed is *stale*; one whose size, trailer, header, offsets or (``verify="full"``) checksums
do not add up is *corrupt*; both are rebuilt with a warning and never used. The build is
atomic (:func:`dataseg.utils.atomic.atomic_write`) and serialised between processes by an
``flock`` on ``<cache>.lock``, so eight ranks starting at once parse the json once.

Parsing uses msgspec (typed structs, C speed) on the annotation array cut into pieces of
``_PIECE_BYTES``, so peak memory is the json bytes plus the output columns, not one Python dict
per box. A json the fast parser cannot read (e.g. string ids, ``NaN`` literals, a bbox with more
than four numbers) is loaded by the json path instead, with a warning and without a cache.

Environment: ``DATASEG_COLUMNAR_CACHE=0`` turns the cache off (json path always);
``DATASEG_CACHE_DIR`` puts cache files there instead of next to the json.
"""
import collections.abc
import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import msgspec
import numpy as np
import torch

from ..utils.atomic import atomic_write
from .loading import (
    DatasetFormatError,
    coco_box_columns,
    load_box_dicts,
    to_contiguous,
    vocabulary_index,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ColumnarBoxDataset",
    "CacheError",
    "build_box_cache",
    "cache_path_for",
    "ensure_box_cache",
    "load_box_dataset",
    "open_box_cache",
    "parse_coco_boxes",
]

FORMAT_VERSION = 1
_MAGIC = b"DTSGCOL1"
_END = b"DTSGEND1"
_ALIGN = 64
# Annotation-array bytes handed to msgspec per call: bounds the Python objects alive at once
# (~300 B per box -> ~25 MB per 8 MB piece).
_PIECE_BYTES = 8 << 20
_ENV_ENABLE = "DATASEG_COLUMNAR_CACHE"
_ENV_DIR = "DATASEG_CACHE_DIR"


class CacheError(RuntimeError):
    """A cache file is stale (its json changed) or corrupt (truncated, garbled)."""


class _FastParseUnsupported(ValueError):
    """The json is legal for the json path but not for the fast parser's typed schema."""


# ---------------------------------------------------------------- parsing (msgspec, typed)
class _Image(msgspec.Struct, gc=False):
    id: int
    file_name: str
    height: int
    width: int


class _Box(msgspec.Struct, gc=False):
    image_id: int
    category_id: int
    bbox: Tuple[float, float, float, float]
    iscrowd: Union[bool, int] = 0
    id: int = -1


class _Top(msgspec.Struct):
    images: msgspec.Raw
    annotations: msgspec.Raw


_WS = frozenset(b" \t\r\n")


def _decode(text: bytes, typ, json_file: str, what: str, first: int):
    try:
        return msgspec.json.decode(text, type=typ)
    except msgspec.ValidationError as e:
        msg = str(e)
        if "$[" in msg:  # "... - at `$[12].bbox`": make the index absolute
            head, _, rest = msg.partition("$[")
            idx, _, tail = rest.partition("]")
            if idx.isdigit():
                msg = f"{head}{what}[{first + int(idx)}]{tail}"
        raise _FastParseUnsupported(f"{json_file}: {msg}") from e
    except msgspec.DecodeError as e:
        raise _FastParseUnsupported(f"{json_file}: {e}") from e


def _decode_array(raw: np.ndarray, typ, json_file: str, what: str, piece_bytes: int):
    """Yields the elements of the json array ``raw`` (uint8, the array's text) decoded as
    ``typ`` (a List[Struct]), one piece of about ``piece_bytes`` at a time.

    Cuts are guessed at a ``,`` that follows a ``}`` and checked by msgspec: a cut inside a
    string or a nested value leaves the piece unterminated or unbalanced, which it rejects
    (DecodeError), and the next earlier ``,`` is tried. The whole document was already
    checked as json, so a piece that decodes is a true run of elements."""
    lo, hi = 0, len(raw) - 1
    while lo <= hi and raw[lo] in _WS:
        lo += 1
    while hi >= lo and raw[hi] in _WS:
        hi -= 1
    if lo > hi or raw[lo] != ord("[") or raw[hi] != ord("]"):
        raise _FastParseUnsupported(f"{json_file}: '{what}' is not a json array")
    lo += 1
    first = 0
    while lo < hi:
        if hi - lo <= piece_bytes:
            yield first, _decode(b"[" + raw[lo:hi].tobytes() + b"]", typ, json_file, what, first)
            return
        end = lo + piece_bytes
        for c in (np.flatnonzero(raw[lo:end] == ord(",")) + lo)[::-1]:
            c = int(c)
            k = c - 1
            while k > lo and raw[k] in _WS:
                k -= 1
            if raw[k] != ord("}"):
                continue
            try:
                items = msgspec.json.decode(b"[" + raw[lo:c].tobytes() + b"]", type=typ)
            except msgspec.DecodeError:
                continue  # not a cut between two elements
            except msgspec.ValidationError:
                items = _decode(b"[" + raw[lo:c].tobytes() + b"]", typ, json_file, what, first)
            yield first, items
            first += len(items)
            lo = c + 1
            break
        else:
            piece_bytes *= 2  # one element longer than a piece: widen


def parse_coco_boxes(json_file: str, piece_bytes: int = _PIECE_BYTES) -> Dict[str, np.ndarray]:
    """Parses a COCO box json into the columns of :func:`dataseg.data.loading.coco_box_columns`,
    which checks them exactly as it does for the json path (duplicate image ids, annotations of
    unknown images, bad boxes: DatasetFormatError with the same message). The category ids are
    not checked here (the cache serves any vocabulary): the dataset checks them when opened.
    Raises _FastParseUnsupported for a json the typed schema rejects.
    """
    with open(json_file, "rb") as f:
        data = f.read()
    try:
        top = msgspec.json.decode(data, type=_Top)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise _FastParseUnsupported(f"{json_file}: {e}") from e
    images = _decode(bytes(top.images), List[_Image], json_file, "images", 0)
    n = len(images)
    raw = {"image_id": np.fromiter((im.id for im in images), np.int64, n),
           "height": np.fromiter((im.height for im in images), np.int32, n),
           "width": np.fromiter((im.width for im in images), np.int32, n),
           "file_name": [im.file_name for im in images]}
    del images

    ann_bytes = np.frombuffer(top.annotations, np.uint8)
    del data, top
    cols: Dict[str, list] = {"ann_image": [], "category": [], "bbox": [], "crowd": [],
                             "ann_id": []}
    for _, anns in _decode_array(ann_bytes, List[_Box], json_file, "annotations", piece_bytes):
        m = len(anns)
        cols["ann_image"].append(np.fromiter((a.image_id for a in anns), np.int64, m))
        cols["category"].append(np.fromiter((a.category_id for a in anns), np.int64, m))
        cols["bbox"].append(np.fromiter(itertools.chain.from_iterable(a.bbox for a in anns),
                                        np.float32, 4 * m))
        cols["crowd"].append(np.fromiter((1 if a.iscrowd else 0 for a in anns), np.uint8, m))
        cols["ann_id"].append(np.fromiter((a.id for a in anns), np.int64, m))
        del anns
    del ann_bytes
    for key, dtype in (("ann_image", np.int64), ("category", np.int64), ("bbox", np.float32),
                       ("crowd", np.uint8), ("ann_id", np.int64)):
        parts = cols.pop(key)
        raw[key] = np.concatenate(parts) if parts else np.zeros(0, dtype)
        del parts
    raw["bbox"] = raw["bbox"].reshape(-1, 4)
    return coco_box_columns(json_file, raw)


# ---------------------------------------------------------------- the cache file
def _source_key(json_file: str) -> dict:
    st = os.stat(json_file)
    return {"path": os.path.abspath(json_file), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_path_for(json_file: str, cache_dir: Optional[str] = None) -> Path:
    """Where the cache of ``json_file`` lives: ``cache_dir``, else ``$DATASEG_CACHE_DIR``, else
    the json's folder when writable, else ``~/.cache/dataseg/columnar``. The name carries a hash
    of the json's absolute path, so one cache folder can serve many jsons."""
    src = os.path.abspath(json_file)
    folder = cache_dir or os.environ.get(_ENV_DIR)
    if not folder:
        folder = os.path.dirname(src)
        if not os.access(folder, os.W_OK):
            folder = os.path.join(os.path.expanduser("~"), ".cache", "dataseg", "columnar")
    digest = hashlib.sha1(src.encode("utf-8")).hexdigest()[:10]
    return Path(folder) / f"{os.path.basename(src)}.{digest}.dtsgcol"


def _raw_bytes(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array without a copy (also for empty arrays)."""
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _write_cache(path: Path, columns: Dict[str, np.ndarray], source: dict) -> None:
    arrays, offset = {}, 0
    for name, arr in columns.items():
        arr = np.ascontiguousarray(arr)
        arrays[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                        "crc32": zlib.crc32(_raw_bytes(arr))}
        offset += -(-arr.nbytes // _ALIGN) * _ALIGN
    header = {"format": FORMAT_VERSION, "source": source, "arrays": arrays}
    # the header holds the data start and file size, which depend on its own length: fix point
    for _ in range(3):
        blob = json.dumps(header, sort_keys=True).encode("utf-8")
        data_start = -(-(16 + len(blob)) // _ALIGN) * _ALIGN
        header["data_start"] = data_start
        header["file_size"] = data_start + offset + 16
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    assert -(-(16 + len(blob)) // _ALIGN) * _ALIGN == header["data_start"]

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(blob)) + blob)
            f.write(b"\0" * (header["data_start"] - f.tell()))
            for arr in columns.values():
                arr = np.ascontiguousarray(arr)
                f.write(_raw_bytes(arr))
                f.write(b"\0" * (-arr.nbytes % _ALIGN))
            f.write(_END + struct.pack("<Q", zlib.crc32(blob)))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users' jobs read the cache too

    atomic_write(path, write)


class _Cache:
    """An open cache file: header + numpy views into one read-only mmap."""

    def __init__(self, path: Path, json_file: Optional[str], verify: str = "structure"):
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise CacheError(f"{path}: no cache file") from None
        try:
            size = os.fstat(fd).st_size
            if size < 32:
                raise CacheError(f"{path}: truncated ({size} bytes)")
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        mm = self._mm
        if mm[:8] != _MAGIC:
            raise CacheError(f"{path}: not a DaTaSeg columnar cache (bad magic)")
        (hlen,) = struct.unpack("<Q", mm[8:16])
        if 16 + hlen > size:
            raise CacheError(f"{path}: truncated (header of {hlen} bytes, file {size})")
        blob = mm[16:16 + hlen]
        try:
            header = json.loads(blob)
        except ValueError as e:
            raise CacheError(f"{path}: unreadable header ({e})") from None
        if header.get("format") != FORMAT_VERSION:
            raise CacheError(f"{path}: format {header.get('format')}, expected {FORMAT_VERSION}")
        if header.get("file_size") != size:
            raise CacheError(f"{path}: truncated or extended ({size} bytes, header says "
                             f"{header.get('file_size')})")
        if mm[size - 16:size - 8] != _END or \
                struct.unpack("<Q", mm[size - 8:size])[0] != zlib.crc32(blob):
            raise CacheError(f"{path}: bad trailer (file not completely written)")
        if json_file is not None and header["source"] != _source_key(json_file):
            raise CacheError(f"{path}: stale (made from {header['source']}, the json is now "
                             f"{_source_key(json_file)})")
        self.header = header
        self.arrays = {}
        start = header["data_start"]
        for name, a in header["arrays"].items():
            dt = np.dtype(a["dtype"])
            count = int(np.prod(a["shape"], dtype=np.int64))
            if start + a["offset"] + count * dt.itemsize > size - 16:
                raise CacheError(f"{path}: array '{name}' runs past the end of the file")
            arr = np.frombuffer(mm, dt, count, start + a["offset"]).reshape(a["shape"])
            if verify == "full" and zlib.crc32(_raw_bytes(arr)) != a["crc32"]:
                raise CacheError(f"{path}: checksum mismatch in array '{name}'")
            self.arrays[name] = arr
        self._check_structure()

    def _check_structure(self) -> None:
        a, p = self.arrays, self.path
        n = len(a["image_id"])
        for name, total in (("box_off", len(a["boxes"])), ("name_off", len(a["names"]))):
            off = a[name]
            if len(off) != n + 1 or off[0] != 0 or off[-1] != total or (np.diff(off) < 0).any():
                raise CacheError(f"{p}: offsets '{name}' are inconsistent")
        m = len(a["boxes"])
        if len(a["category"]) != m or len(a["crowd"]) != m or len(a["height"]) != n \
                or len(a["width"]) != n or len(a["n_noncrowd"]) != n:
            raise CacheError(f"{p}: column lengths disagree")


def build_box_cache(json_file: str, path: Optional[Path] = None) -> Path:
    """Parses ``json_file`` and writes its cache atomically (no lock; see ensure_box_cache)."""
    path = Path(path) if path is not None else cache_path_for(json_file)
    source = _source_key(json_file)
    columns = parse_coco_boxes(json_file)
    if _source_key(json_file) != source:
        raise CacheError(f"{json_file} changed while it was being parsed")
    _write_cache(path, columns, source)
    return path


def ensure_box_cache(json_file: str, path: Optional[Path] = None,
                     verify: str = "structure") -> "_Cache":
    """Opens the valid cache of ``json_file``, building it first if absent, stale or corrupt.

    Concurrent callers (ranks, workers) serialise on ``<cache>.lock``: one parses, the others
    wait and then map its file. ``verify="full"`` also checks every array's crc32."""
    path = Path(path) if path is not None else cache_path_for(json_file)
    try:
        return _Cache(path, json_file, verify)
    except CacheError as e:
        first_error = e
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                return _Cache(path, json_file, verify)  # built while we waited
            except CacheError as e:
                if path.exists():
                    logger.warning("columnar cache %s not used: %s; rebuilding", path, e)
                else:
                    logger.info("building columnar cache %s from %s (%s)", path, json_file,
                                first_error)
            build_box_cache(json_file, path)
            return _Cache(path, json_file, verify)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_box_cache(path: Path, json_file: Optional[str] = None,
                   verify: str = "structure") -> "_Cache":
    """Opens an existing cache (CacheError if stale for ``json_file``, or corrupt)."""
    return _Cache(Path(path), json_file, verify)


# ---------------------------------------------------------------- the lazy dataset
class ColumnarBoxDataset(torch.utils.data.Dataset, collections.abc.Sequence):
    """Box records indexed lazily from a memory-mapped cache (see module doc).

    ``ds[i]`` returns a fresh dict equal to record i of the json path. ``len``, iteration and
    pickling (a worker started by spawn re-maps the file) work as for a list, so Detectron2's
    samplers, ``MapDataset`` and ``get_detection_dataset_dicts`` (which leaves torch Datasets
    as they are) take it unchanged. Do not wrap it in ``DatasetFromList(serialize=True)``: that
    pickles every record into each process, which is what this class avoids.
    """

    def __init__(self, cache: "_Cache", dataset_name: str, image_root: str,
                 categories: Sequence[dict], json_file: Optional[str] = None,
                 index: Optional[np.ndarray] = None):
        self._cache = cache
        self.dataset_name, self.image_root = dataset_name, str(image_root)
        self.json_file = json_file
        self._categories = list(categories)
        self._index = index
        self._vocab = vocabulary_index(self._categories)
        present = cache.arrays["category_ids"]
        missing = present[to_contiguous(present, self._vocab)[1]]
        if len(missing):
            self._raise_unknown_category(int(missing[0]))

    def _raise_unknown_category(self, cat: int) -> None:
        if self.json_file is not None and os.path.isfile(self.json_file):
            # the json path names the annotation too (the cache keeps no annotation ids)
            load_box_dicts(self.dataset_name, self.image_root, self.json_file, self._categories)
        a = self._cache.arrays
        k = int(np.flatnonzero(a["category"] == cat)[0])
        i = int(np.searchsorted(a["box_off"], k, side="right") - 1)
        raise DatasetFormatError(
            f"{self.json_file or self._cache.path}: image {a['image_id'][i]}: category_id {cat} "
            f"is not in the registered vocabulary of '{self.dataset_name}'")

    @property
    def cache_path(self) -> Path:
        return self._cache.path

    def __len__(self) -> int:
        return len(self._cache.arrays["image_id"]) if self._index is None else len(self._index)

    def __getitem__(self, i: Union[int, slice]) -> Union[dict, List[dict]]:
        n = len(self)
        if isinstance(i, slice):  # as a list would: a list of records
            return [self[k] for k in range(*i.indices(n))]
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for '{self.dataset_name}' ({n} records)")
        i %= n
        if self._index is not None:
            i = int(self._index[i])
        a = self._cache.arrays
        s, e = int(a["box_off"][i]), int(a["box_off"][i + 1])
        keep = a["crowd"][s:e] == 0
        boxes = a["boxes"][s:e][keep]  # boolean indexing copies: the record owns its arrays
        cats = a["category"][s:e][keep]
        classes = to_contiguous(cats, self._vocab)[0]
        name = a["names"][int(a["name_off"][i]):int(a["name_off"][i + 1])].tobytes()
        return {"file_name": os.path.join(self.image_root, name.decode("utf-8")),
                "image_id": int(a["image_id"][i]), "height": int(a["height"][i]),
                "width": int(a["width"][i]), "boxes": boxes, "box_classes": classes,
                "dataset_name": self.dataset_name}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def nonempty(self) -> "ColumnarBoxDataset":
        """The records with at least one non-crowd box (Detectron2's filter_empty), lazily."""
        keep = self._cache.arrays["n_noncrowd"] > 0
        idx = np.flatnonzero(keep) if self._index is None else self._index[keep[self._index]]
        return ColumnarBoxDataset(self._cache, self.dataset_name, self.image_root,
                                  self._categories, self.json_file, idx)

    def __reduce__(self):
        return (_reopen, (str(self._cache.path), self.dataset_name, self.image_root,
                          self._categories, self.json_file, self._index))


def _reopen(path, dataset_name, image_root, categories, json_file, index):
    return ColumnarBoxDataset(open_box_cache(Path(path), json_file), dataset_name, image_root,
                              categories, json_file, index)


def cache_enabled() -> bool:
    return os.environ.get(_ENV_ENABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def load_box_dataset(dataset_name: str, image_root: str, json_file: str,
                     categories: Sequence[dict]) -> Union[ColumnarBoxDataset, List[dict]]:
    """What ``register_box_dataset`` registers: the cached lazy dataset, or the json path's
    list when the cache is off (``DATASEG_COLUMNAR_CACHE=0``), cannot be written, or the
    fast parser cannot read the json (each with a warning naming the reason)."""
    json_file = str(json_file)
    if not cache_enabled():
        return load_box_dicts(dataset_name, image_root, json_file, categories)
    if not os.path.isfile(json_file):
        raise DatasetFormatError(f"json file not found: {json_file}")
    try:
        cache = ensure_box_cache(json_file)
    except _FastParseUnsupported as e:
        logger.warning("dataset '%s': no columnar cache, the fast parser cannot read the json "
                       "(%s); using the json path", dataset_name, e)
        return load_box_dicts(dataset_name, image_root, json_file, categories)
    except OSError as e:
        logger.warning("dataset '%s': cannot write the columnar cache (%s); using the json "
                       "path", dataset_name, e)
        return load_box_dicts(dataset_name, image_root, json_file, categories)
    return ColumnarBoxDataset(cache, dataset_name, image_root, categories, json_file)
