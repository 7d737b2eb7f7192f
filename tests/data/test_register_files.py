"""Datasets declared in YAML files: vocabularies, categories from the json, and a clear error
naming the file, the entry and the key for each bad entry."""
import json
import pickle
import subprocess
import sys
import textwrap

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from dataseg.data import register_files
from dataseg.data.register import unregister_dataset
from dataseg.data.register_files import (
    DatasetFileError,
    RegisterDatasetFiles,
    register_dataset_files,
)
from dataseg.vocabulary import read_vocabulary

COCO_CATS = [{"id": 3, "name": "car", "isthing": 1}, {"id": 7, "name": "road", "isthing": 0}]


@pytest.fixture
def layout(tmp_path):
    """Folders and jsons for one dataset of each task (registration reads no images)."""
    for d in ("img", "sem", "pan"):
        (tmp_path / d).mkdir()
    (tmp_path / "pan.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": COCO_CATS}))
    (tmp_path / "inst.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": COCO_CATS[:1]}))
    (tmp_path / "nocats.json").write_text(json.dumps({"images": [], "annotations": []}))
    yield tmp_path
    for name in list(register_files._REGISTERED_FROM):
        unregister_dataset(name)
        register_files._REGISTERED_FROM.pop(name)


def write(tmp, text, name="datasets.yaml"):
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def test_one_entry_of_each_task_with_file_vocabularies(layout):
    (layout / "classes.txt").write_text("# ADE-style\nwall\nperson | individual\n\n"
                                        "car, automobile, motorcar\n")
    (layout / "inst_vocab.txt").write_text("car | automobile\n")
    (layout / "box_vocab.json").write_text(json.dumps({"categories": COCO_CATS[:1]}))
    path = write(layout, """\
        - {name: t_sem, task: semantic, image_root: img, sem_seg_root: sem,
           class_names: classes.txt, image_ext: .png, ignore_label: 255}
        - {name: t_pan, task: panoptic, image_root: img, panoptic_root: pan,
           panoptic_json: pan.json}
        - {name: t_inst, task: instance, image_root: img, json_file: inst.json,
           categories: inst_vocab.txt}
        - {name: t_box, task: box, image_root: img, json_file: inst.json,
           categories: box_vocab.json, augmentation: resize_crop}
        - name: t_sem_inline
          task: semantic
          image_root: img
          sem_seg_root: sem
          class_names: [sky, [tree, plant]]
          is_thing: [false, true]
        """)
    names = register_dataset_files([str(path)])
    assert names == ["t_sem", "t_pan", "t_inst", "t_box", "t_sem_inline"]
    sem = MetadataCatalog.get("t_sem")
    assert sem.class_synonyms == [["wall"], ["person", "individual"],
                                  ["car", "automobile", "motorcar"]]
    assert sem.image_root == str(layout / "img")  # relative to the file's folder
    pan = MetadataCatalog.get("t_pan")  # categories omitted: the json's own
    assert pan.stuff_classes == ["car", "road"] and pan.is_thing == [True, False]
    assert pan.thing_dataset_id_to_contiguous_id == {3: 0}
    inst = MetadataCatalog.get("t_inst")  # text vocabulary: ids from the json, synonyms added
    assert inst.class_synonyms == [["car", "automobile"]]
    assert inst.thing_dataset_id_to_contiguous_id == {3: 0}
    assert MetadataCatalog.get("t_box").augmentation == "resize_crop"
    assert MetadataCatalog.get("t_sem_inline").is_thing == [False, True]
    # registering the same file again (another rank, a worker) replaces, not fails
    assert register_dataset_files([str(path)]) == names


def test_vocabulary_file_synonym_separators(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("wall\nbuilding, edifice\nsky|heaven\nfloor | flooring , ground\n")
    assert read_vocabulary(str(f)).class_synonyms == (
        ("wall",), ("building", "edifice"), ("sky", "heaven"), ("floor", "flooring", "ground"))


BAD = [
    ("- [not, a, mapping]", None, "must be a mapping"),
    ("- {task: semantic, image_root: img}", "name", "is missing"),
    ("- {name: b, task: semantics}", "task", "not one of"),
    ("- {name: b, task: semantic, image_rot: img, sem_seg_root: sem, class_names: [a]}",
     "image_rot", "did you mean 'image_root'"),
    ("- {name: b, task: semantic, sem_seg_root: sem, class_names: [a]}", "image_root",
     "is missing"),
    ("- {name: b, task: semantic, image_root: nowhere, sem_seg_root: sem, class_names: [a]}",
     "image_root", "folder not found"),
    ("- {name: b, task: instance, image_root: img, json_file: none.json}", "json_file",
     "file not found"),
    ("- {name: b, task: semantic, image_root: img, sem_seg_root: sem, class_names: no.txt}",
     "class_names", "vocabulary file not found"),
    ("- {name: b, task: semantic, image_root: img, sem_seg_root: sem, class_names: []}",
     "class_names", "non-empty list"),
    ("- {name: b, task: semantic, image_root: img, sem_seg_root: sem, class_names: [a],\n"
     "   ignore_label: 0}", None, "ignore_label 0 must be in"),
    ("- {name: b, task: box, image_root: img, json_file: nocats.json}", "categories",
     "has no 'categories' list"),
    ("- {name: b, task: instance, image_root: img, json_file: inst.json,\n"
     "   categories: [{name: car}]}", "categories", "'id' and 'name'"),
    ("- {name: b, task: instance, image_root: img, json_file: inst.json,\n"
     "   categories: vocab.txt}", "categories", "class 'bus' is not a category"),
    ("- {name: b, task: box, image_root: img, json_file: inst.json, augmentation: jitter}",
     None, "augmentation 'jitter' is not one of"),
    ("- {name: b, task: box, image_root: img, json_file: inst.json}\n"
     "- {name: b, task: box, image_root: img, json_file: inst.json}", "name",
     "also the name of entry 0"),
    ("- {name: ade20k_sem_seg_val, task: box, image_root: img, json_file: inst.json}", "name",
     "already registered"),
]


@pytest.mark.parametrize("text,key,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_entry_names_file_entry_and_key(layout, text, key, message):
    (layout / "vocab.txt").write_text("bus\n")
    path = write(layout, text)
    with pytest.raises(DatasetFileError) as err:
        register_dataset_files([str(path)])
    msg = str(err.value)
    assert msg.startswith(f"{path}: entry "), msg
    if key:
        assert f"key '{key}'" in msg, msg
    assert message in msg, msg


@pytest.mark.parametrize("text,message", [
    ("name: a\ntask: box\n", "non-empty YAML list"),
    ("- {name: a, task: [unclosed\n", "not valid YAML"),
])
def test_bad_file(layout, text, message):
    path = write(layout, text)
    with pytest.raises(DatasetFileError, match=message) as err:
        register_dataset_files([str(path)])
    assert str(path) in str(err.value)
    with pytest.raises(DatasetFileError, match="datasets file not found"):
        register_dataset_files([str(layout / "missing.yaml")])


def test_data_loader_worker_in_a_fresh_process_registers_the_files(layout):
    """Workers started with "spawn" do not inherit the catalogs: their init function (the
    picklable RegisterDatasetFiles) registers the files."""
    path = write(layout, "- {name: w_pan, task: panoptic, image_root: img, panoptic_root: pan,"
                         " panoptic_json: pan.json}\n")
    init = pickle.dumps(RegisterDatasetFiles([str(path)]))
    code = ("import pickle, sys; from detectron2.data import DatasetCatalog, MetadataCatalog; "
            "import dataseg.data.register_files; "
            "assert 'w_pan' not in DatasetCatalog.list(); "
            "pickle.loads(sys.stdin.buffer.read())(0); "
            "print(MetadataCatalog.get('w_pan').stuff_classes)")
    out = subprocess.run([sys.executable, "-c", code], input=init, capture_output=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert b"['car', 'road']" in out.stdout
    assert "w_pan" not in DatasetCatalog.list()  # this process was not touched


def test_config_register_paths_resolve_from_the_cwd_then_the_config_folder(layout, tmp_path,
                                                                          monkeypatch):
    from dataseg.engine.defaults import ConfigError, build_cfg, register_config_datasets

    write(layout, "- {name: c_pan, task: panoptic, image_root: img, panoptic_root: pan,"
                  " panoptic_json: pan.json}\n", name="mine.yaml")
    config = layout / "train.yaml"
    config.write_text("DATASETS:\n  REGISTER: ('mine.yaml',)\n  TEST: ('c_pan',)\n")
    monkeypatch.chdir(tmp_path.parent)  # not the config's folder
    cfg = build_cfg(str(config))
    assert register_config_datasets(cfg, str(config)) == ["c_pan"]
    assert cfg.DATASETS.REGISTER == (str(layout / "mine.yaml"),)
    cfg = build_cfg(str(config), ["DATASETS.REGISTER", "('other.yaml',)"])
    with pytest.raises(ConfigError, match="datasets file not found: other.yaml"):
        register_config_datasets(cfg, str(config))


def test_categories_of_a_large_json_are_found_without_parsing_it_whole(tmp_path, monkeypatch):
    from dataseg.data.register_files import json_categories

    monkeypatch.setattr(register_files, "_SMALL_JSON_BYTES", 0)
    path = tmp_path / "big.json"
    data = {"images": [{"id": 1, "file_name": "categories.jpg", "height": 2, "width": 2}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1],
                             "note": '"categories": 5'}],
            "categories": COCO_CATS}
    path.write_text(json.dumps(data))
    assert json_categories(str(path)) == COCO_CATS
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="has no 'categories' list"):
        json_categories(str(path))
