"""The columnar annotation cache (dataseg.data.columnar): exact round trip against the json
path, stale / corrupt caches rebuilt, concurrent builds, and the loaders taking the lazy
dataset as is (no DatasetFromList serialization)."""
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, DatasetFromList
from detectron2.data.build import get_detection_dataset_dicts

from dataseg.data import columnar
from dataseg.data.build import build_multi_dataset_train_loader, get_train_dataset_dicts
from dataseg.data.columnar import (
    CacheError,
    ColumnarBoxDataset,
    cache_path_for,
    ensure_box_cache,
    load_box_dataset,
    open_box_cache,
    parse_coco_boxes,
)
from dataseg.data.loading import load_box_dicts, skipping_bad_records
from dataseg.data.register import register_box_dataset

REPO = Path(__file__).resolve().parents[2]
# dataset ids in a non-sorted, non-contiguous order: contiguous id = position in this list
CATS = [{"id": 250, "name": "lamp"}, {"id": 3, "name": "cup"}, {"id": 17, "name": "sofa"}]


def _awkward_json() -> dict:
    """Non-contiguous, unsorted image ids; an image without boxes; an image with only a crowd
    box; crowd boxes among normal ones; integer and fractional coordinates; a zero-size box; a
    unicode file name; extra keys (one holding '}, {' inside a string, to trip naive cuts)."""
    images = [{"id": 1000, "file_name": "b/x.jpg", "height": 480, "width": 640},
              {"id": 7, "file_name": "a/y.jpg", "height": 30, "width": 40, "extra": [1, {}]},
              {"id": 3, "file_name": "ünï code.jpg", "height": 50, "width": 60},
              {"id": 123456789012, "file_name": "only_crowd.jpg", "height": 10, "width": 10},
              {"id": 8, "file_name": "empty.jpg", "height": 20, "width": 20}]
    anns = [
        {"id": 1, "image_id": 7, "category_id": 17, "bbox": [1, 2, 3, 4], "iscrowd": 0},
        {"id": 2, "image_id": 1000, "category_id": 250, "bbox": [0.1, 0.2, 10.35, 20.7],
         "note": "a}, {b", "area": 1.0},
        {"id": 9, "image_id": 7, "category_id": 3, "bbox": [5.5, 6.25, 0, 0], "iscrowd": 1},
        {"id": 4, "image_id": 3, "category_id": 3, "bbox": [1e-3, 2.0, 1.0, 1.0]},
        {"id": 5, "image_id": 123456789012, "category_id": 250, "bbox": [0, 0, 5, 5],
         "iscrowd": 1},
        {"id": 6, "image_id": 7, "category_id": 250, "bbox": [9, 8, 0, 0], "iscrowd": 0},
        {"id": 7, "image_id": 1000, "category_id": 17, "bbox": [100, 200, 33.3, 44.4],
         "segmentation": [[1, 2, 3, 4, 5, 6]]},
    ]
    return {"info": {"x": "y"}, "categories": [dict(c) for c in CATS], "images": images,
            "annotations": anns}


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _assert_same_records(a, b):
    assert len(a) == len(b)
    for r, q in zip(a, b):
        assert r.keys() == q.keys()
        for k in r:
            if isinstance(r[k], np.ndarray):
                assert r[k].dtype == q[k].dtype and r[k].shape == q[k].shape, k
                np.testing.assert_array_equal(r[k], q[k])
            else:
                assert r[k] == q[k] and type(r[k]) is type(q[k]), k


@pytest.fixture
def awkward(tmp_path):
    return _write(tmp_path / "awkward.json", _awkward_json())


def test_round_trip_matches_json_path_exactly(awkward, tmp_path):
    want = load_box_dicts("aw", "/imgs", awkward, CATS)
    ds = load_box_dataset("aw", "/imgs", awkward, CATS)
    assert isinstance(ds, ColumnarBoxDataset)
    assert ds.cache_path == cache_path_for(awkward) and ds.cache_path.parent == tmp_path
    _assert_same_records(want, list(ds))
    # hand-checked facts of the awkward set
    assert [r["image_id"] for r in ds] == [1000, 7, 3, 123456789012, 8]
    assert [len(r["boxes"]) for r in ds] == [2, 2, 1, 0, 0]  # crowd boxes dropped
    assert ds[1]["boxes"].tolist() == [[1, 2, 4, 6], [9, 8, 9, 8]]
    assert ds[1]["box_classes"].tolist() == [2, 0]  # 17 -> 2, 250 -> 0
    assert ds[2]["file_name"] == os.path.join("/imgs", "ünï code.jpg")
    assert ds[-1]["image_id"] == 8 and ds[1:3][0]["image_id"] == 7
    with pytest.raises(IndexError):
        ds[5]
    # the filtered view keeps records with a non-crowd box, lazily
    assert [r["image_id"] for r in ds.nonempty()] == [1000, 7, 3]
    # pickling (spawned workers) re-maps the file
    _assert_same_records(list(ds.nonempty()), list(pickle.loads(pickle.dumps(ds.nonempty()))))
    # a fresh process opening the warm cache sees the same
    _assert_same_records(want, list(load_box_dataset("aw", "/imgs", awkward, CATS)))


def test_cuts_between_pieces_are_exact(awkward):
    whole = parse_coco_boxes(awkward)
    for piece in (1, 40, 97, 300):  # cuts land inside strings, numbers and nested values
        part = parse_coco_boxes(awkward, piece_bytes=piece)
        assert whole.keys() == part.keys()
        for k in whole:
            np.testing.assert_array_equal(whole[k], part[k])


def test_empty_annotations(tmp_path):
    data = _awkward_json()
    data["annotations"] = []
    path = _write(tmp_path / "e.json", data)
    ds = load_box_dataset("e", "/i", path, CATS)
    _assert_same_records(load_box_dicts("e", "/i", path, CATS), list(ds))
    assert len(ds.nonempty()) == 0


def test_changed_json_is_rebuilt(awkward, caplog):
    first = load_box_dataset("aw", "/i", awkward, CATS)
    assert len(first) == 5
    data = _awkward_json()
    data["images"].append({"id": 55, "file_name": "new.jpg", "height": 1, "width": 1})
    data["annotations"].append({"id": 99, "image_id": 55, "category_id": 3, "bbox": [0, 0, 1, 1]})
    _write(Path(awkward), data)
    with pytest.raises(CacheError, match="stale"):
        open_box_cache(cache_path_for(awkward), awkward)
    with caplog.at_level(logging.WARNING, logger="dataseg.data.columnar"):
        again = load_box_dataset("aw", "/i", awkward, CATS)
    assert any("stale" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records)
    assert len(again) == 6 and again[5]["boxes"].tolist() == [[0, 0, 1, 1]]
    _assert_same_records(load_box_dicts("aw", "/i", awkward, CATS), list(again))


@pytest.mark.parametrize("damage", ["truncate", "truncate_header", "garble_offsets", "empty"])
def test_corrupt_cache_is_detected_and_rebuilt(awkward, caplog, damage):
    load_box_dataset("aw", "/i", awkward, CATS)
    path = cache_path_for(awkward)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[:-100]
    elif damage == "truncate_header":
        blob = blob[:40]
    elif damage == "empty":
        blob = bytearray()
    else:  # same size, trailer intact: an offsets array made non-monotone
        cache = open_box_cache(path)
        start = cache.header["data_start"] + cache.header["arrays"]["box_off"]["offset"]
        del cache
        blob[start + 8:start + 16] = np.int64(10**6).tobytes()
    path.write_bytes(bytes(blob))
    st = os.stat(awkward)
    with pytest.raises(CacheError):
        open_box_cache(path)
    with caplog.at_level(logging.WARNING, logger="dataseg.data.columnar"):
        ds = load_box_dataset("aw", "/i", awkward, CATS)
    assert os.stat(awkward).st_mtime_ns == st.st_mtime_ns
    assert any("not used" in r.getMessage() for r in caplog.records)
    _assert_same_records(load_box_dicts("aw", "/i", awkward, CATS), list(ds))
    open_box_cache(path, awkward, verify="full")  # the rebuilt file is whole


def test_flipped_data_byte_is_caught_by_full_verify(awkward):
    load_box_dataset("aw", "/i", awkward, CATS)
    path = cache_path_for(awkward)
    cache = open_box_cache(path)
    at = cache.header["data_start"] + cache.header["arrays"]["boxes"]["offset"]
    del cache
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))
    open_box_cache(path)  # structure still fine
    with pytest.raises(CacheError, match="checksum"):
        open_box_cache(path, verify="full")


_BUILD = """
import sys
from dataseg.data.columnar import ensure_box_cache
c = ensure_box_cache(sys.argv[1])
print(len(c.arrays["image_id"]), int(c.arrays["box_off"][-1]))
"""


def test_two_processes_building_at_once_leave_one_valid_file(tmp_path):
    data = _awkward_json()
    # enough annotations that the parse takes a moment and the two builds overlap
    data["annotations"] = [dict(a, id=k, image_id=7) for k, a in
                           enumerate(data["annotations"][:1] * 60000)]
    path = _write(tmp_path / "big.json", data)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] == "5 60000\n"
    caches = [p.name for p in tmp_path.iterdir() if p.name.endswith(".dtsgcol")]
    assert len(caches) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    cache = ensure_box_cache(path, verify="full")
    assert len(cache.arrays["boxes"]) == 60000


def test_json_the_fast_parser_rejects_falls_back_to_json_path(tmp_path, caplog):
    data = _awkward_json()
    data["annotations"][0]["bbox"] = [1, 2, 3, 4, 99]  # the json path reads the first four
    path = _write(tmp_path / "five.json", data)
    with caplog.at_level(logging.WARNING, logger="dataseg.data.columnar"):
        got = load_box_dataset("f", "/i", path, CATS)
    assert isinstance(got, list)
    assert any("annotations[0]" in r.getMessage() and "json path" in r.getMessage()
               for r in caplog.records)
    _assert_same_records(load_box_dicts("f", "/i", path, CATS), got)
    assert not cache_path_for(path).exists()


def test_cache_off_and_unwritable_folder_use_json_path(awkward, tmp_path, monkeypatch):
    monkeypatch.setenv("DATASEG_COLUMNAR_CACHE", "0")
    assert isinstance(load_box_dataset("aw", "/i", awkward, CATS), list)
    monkeypatch.delenv("DATASEG_COLUMNAR_CACHE")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("DATASEG_CACHE_DIR", str(blocker / "sub"))
    got = load_box_dataset("aw", "/i", awkward, CATS)
    assert isinstance(got, list) and len(got) == 5


def test_bad_records_raise_like_the_json_path(tmp_path):
    data = _awkward_json()
    data["annotations"][3]["bbox"] = [0, 0, -1, 2]
    path = _write(tmp_path / "neg.json", data)
    with pytest.raises(columnar.DatasetFormatError, match="annotation 4.*w, h >= 0"):
        load_box_dataset("n", "/i", path, CATS)
    data = _awkward_json()
    data["images"][1]["id"] = 3
    path = _write(tmp_path / "dup.json", data)
    with pytest.raises(columnar.DatasetFormatError, match="image id 3 appears twice"):
        load_box_dataset("d", "/i", path, CATS)
    with pytest.raises(columnar.DatasetFormatError, match="vocabulary"):
        load_box_dataset("v", "/i", _write(tmp_path / "ok.json", _awkward_json()), CATS[:2])


def _break(kind: str) -> dict:
    data = _awkward_json()
    anns, images = data["annotations"], data["images"]
    if kind == "negative_w":
        anns[3]["bbox"] = [0, 0, -1, 2]
    elif kind == "short_bbox":  # the fast parser rejects it: the json path reports it
        anns[1]["bbox"] = [0, 0, 1]
    elif kind == "duplicate_image":
        images[1]["id"] = 3
    elif kind == "unknown_image":
        anns[5]["image_id"] = 55
    elif kind == "unknown_category":
        anns[6]["category_id"] = 99
    elif kind == "category_and_bbox":  # two faults: both paths must name the same first one
        anns[0]["category_id"] = 99
        anns[6]["bbox"] = [1, 1, 2, -3]
    return data


@pytest.mark.parametrize("kind", ["negative_w", "short_bbox", "duplicate_image",
                                  "unknown_image", "unknown_category", "category_and_bbox"])
@pytest.mark.parametrize("skip", [False, True])
def test_json_path_and_cache_reject_a_bad_record_with_one_message(tmp_path, kind, skip):
    # one function (loading.coco_box_columns) owns the record checks of both paths, so the
    # json path and the cache path name the same record with the same words; skipping bad
    # records (missing files) does not hide a malformed annotation in either
    path = _write(tmp_path / f"{kind}.json", _break(kind))
    with skipping_bad_records(skip):
        with pytest.raises(columnar.DatasetFormatError) as by_json:
            load_box_dicts("b", "/i", path, CATS)
        with pytest.raises(columnar.DatasetFormatError) as by_cache:
            load_box_dataset("b", "/i", path, CATS)
    assert str(by_cache.value) == str(by_json.value)
    assert path in str(by_json.value)
    assert not cache_path_for(path).exists() or kind.endswith("category")


def test_loaders_take_the_lazy_dataset_without_serializing(cfg, tmp_path, names, monkeypatch):
    from data_fixtures import write_box_dataset

    b = write_box_dataset(tmp_path / "box", n=3)
    register_box_dataset("c_box", b["image_root"], b["json_file"], b["categories"])
    names.append("c_box")
    assert isinstance(DatasetCatalog.get("c_box"), ColumnarBoxDataset)
    assert isinstance(get_train_dataset_dicts(cfg, "c_box"), ColumnarBoxDataset)
    # Detectron2's own helper keeps torch Datasets as they are (no list, no serialization)
    assert not isinstance(get_detection_dataset_dicts(["c_box"]), list)
    built = []
    monkeypatch.setattr(DatasetFromList, "__init__",
                        lambda self, *a, **k: built.append(a) or None)
    cfg.DATASETS.TRAIN = ("c_box",)
    cfg.DATASETS.TRAIN_AUGMENTATIONS = ["lsj"]
    cfg.INPUT.LSJ.IMAGE_SIZE = 32
    cfg.SOLVER.IMS_PER_BATCH = 2
    batch = next(iter(build_multi_dataset_train_loader(cfg)))
    assert built == []
    assert len(batch) == 2 and all(x["dataset_name"] == "c_box" for x in batch)
    assert all(len(x["instances"]) > 0 for x in batch)
