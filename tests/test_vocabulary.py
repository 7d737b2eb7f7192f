"""One vocabulary (issue 21): one type, one syntax, one reader, the same classes through every
entry point, one duplicate rule, and a text cache that says itself what is embedded."""
import ast
import logging
import re
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from engine_helpers import QUICKSTART, REPO, tiny_opts

import dataseg.text as text
from dataseg import vocabulary as vocabulary_module
from dataseg.config import default_vocabulary_from_cfg
from dataseg.contract import get_dataset_info
from dataseg.data import builtin, register_files
from dataseg.data.register import register_panoptic_dataset, unregister_dataset
from dataseg.data.register_files import DatasetFileError, register_dataset_files
from dataseg.engine.defaults import build_cfg
from dataseg.export import ExportedPredictor, export_model
from dataseg.predictor import DaTaSegPredictor, predictor_from_args
from dataseg.text import TextEmbedder
from dataseg.text.__main__ import main as text_cli
from dataseg.vocabulary import (
    Vocabulary,
    VocabularyError,
    parse_vocabulary,
    read_vocabulary,
    vocabulary_from_items,
)
from dataseg.web.service import RequestError, SegmentationService

# one file with synonyms by '|' and by ', ', a stuff mark, a blank line and a comment
FILE = """\
# the classes of this test
car | automobile
wall, brick wall

grass | lawn : stuff
person
"""
LINES = ["car | automobile", "wall, brick wall", "grass | lawn : stuff", "person"]
TYPED = "; ".join(LINES)
CLASSES = (("car", "automobile"), ("wall", "brick wall"), ("grass", "lawn"), ("person",))
THINGS = (True, True, False, True)


def _load_demo():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dataseg_demo_v", REPO / "demo" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _no_encoder(*a, **k):
    raise AssertionError("the text encoder was loaded: this vocabulary should be cached")


@pytest.fixture
def tiny(tmp_path):
    """A tiny model config (text cache in tmp_path/text_cache) saved as a YAML file."""
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp_path, tmp_path / "out", test=("synth_pan_val",)))
    path = tmp_path / "tiny.yaml"
    path.write_text(cfg.dump())
    return cfg, path


# ------------------------------------------------------------------ the module and the type
def test_the_vocabulary_module_imports_nothing_of_the_project():
    path = Path(vocabulary_module.__file__)
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
    assert imported and not [m for m in imported if m.startswith((".", "dataseg"))], imported


def _calls(node) -> set:
    return {n.func.id for n in ast.walk(node)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def test_one_vocabulary_class_and_one_reader_in_the_package():
    defined, readers = [], []
    for path in (REPO / "dataseg").rglob("*.py"):
        where = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and re.search(r"Vocabulary(Bank)?$", node.name):
                defined.append(f"{where}:{node.name}")
            if isinstance(node, ast.FunctionDef) and re.fullmatch(
                    r"_?(read|load|parse)_(vocabulary|names|class)(_file)?|_parse_names",
                    node.name) and where != "dataseg/vocabulary.py":
                readers.append((f"{where}:{node.name}", _calls(node)))
    assert sorted(defined) == ["dataseg/data/synthetic/vocabulary.py:DomainVocabulary",
                               "dataseg/modeling/vocabulary_bank.py:VocabularyBank",
                               "dataseg/vocabulary.py:Vocabulary"]
    # outside dataseg/vocabulary.py only the builtin category tables are loaded (json with
    # dataset extras such as Cityscapes' train_id), and they are checked by the one rule
    readers = dict(readers)
    assert sorted(readers) == ["dataseg/data/builtin.py:_read_vocabulary",
                               "dataseg/data/builtin.py:load_vocabulary"], readers
    assert "vocabulary_from_categories" in readers["dataseg/data/builtin.py:_read_vocabulary"]
    assert readers["dataseg/data/builtin.py:load_vocabulary"] == {"_read_vocabulary"}


def test_the_web_demo_does_not_import_the_text_package():
    offenders = []
    for path in [*(REPO / "dataseg" / "web").glob("*.py"), REPO / "demo" / "web.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("dataseg.text")]
    assert offenders == []


def test_vocabulary_is_an_immutable_value_with_a_stable_key(tmp_path):
    v = read_vocabulary(_write(tmp_path, "v.txt", FILE))
    assert v.class_synonyms == CLASSES and v.is_thing == THINGS
    assert v.source == "file" and v.origin.endswith("v.txt") and v.dataset is None
    with pytest.raises(AttributeError):
        v.is_thing = (False,) * 4
    typed = parse_vocabulary(TYPED)
    assert typed.source == "typed" and typed.key == v.key and typed != v  # other source
    assert v.key == "48990b02acd430f2"  # a content hash: the same in every process
    assert v.with_stuff(["automobile"]).is_thing == (False, True, False, True)
    pan = get_dataset_info("synth_pan_val").vocabulary
    assert isinstance(pan, Vocabulary) and pan.source == "dataset"
    assert pan.dataset == "synth_pan_val"
    # a class written once more in another spelling is not a new class
    with pytest.raises(VocabularyError, match="class name 'Wall' twice"):
        parse_vocabulary(TYPED + "; Wall")


def test_json_and_coco_category_lists(tmp_path):
    names = read_vocabulary(_write(tmp_path, "v.json", '["car | automobile", ["wall", '
                                   '"brick wall"], "grass|lawn:stuff", "person"]'))
    assert names.class_synonyms == CLASSES and names.is_thing == THINGS
    coco = read_vocabulary(_write(tmp_path, "c.json", '{"categories": ['
                                  '{"id": 3, "name": "car", "synonyms": ["automobile"], '
                                  '"isthing": 1, "color": [1, 2, 3]}, '
                                  '{"id": 9, "name": "grass", "isthing": 0, "color": [4, 5, 6]}]}'))
    assert coco.ids == (3, 9) and coco.colors == ((1, 2, 3), (4, 5, 6))
    assert coco.is_thing == (True, False) and coco.class_names == ["car", "grass"]


@pytest.mark.parametrize("typed,message", [
    ("cat, sofa|couch, grass:stuff",
     "separate classes with ';' (e.g. 'cat; sofa|couch; grass:stuff')"),
    ("cat; dog:solid", "unknown mark ':solid'"),
    ("cat; ; |dog", "empty name"),
    (" ; , ", "empty"),
])
def test_old_or_bad_typed_spellings_get_one_line_saying_what_to_write(typed, message):
    with pytest.raises(VocabularyError) as e:
        parse_vocabulary(typed)
    assert message in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ every entry point
def _write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.write_text(content)
    return path


def _yaml_entry(tmp_path, name, class_names):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "sem").mkdir(exist_ok=True)
    return _write(tmp_path, f"{name}.yaml", textwrap.dedent(f"""\
        - name: {name}
          task: semantic
          image_root: img
          sem_seg_root: sem
          class_names: {class_names}
        """))


def test_one_file_through_every_entry_point(tmp_path, tiny, monkeypatch, capsys):
    cfg, cfg_path = tiny
    embedder = TextEmbedder(cache_dir=str(tmp_path / "text_cache"))
    file = _write(tmp_path, "classes.txt", FILE)
    got = {"read_vocabulary": read_vocabulary(file),
           "typed line": parse_vocabulary(TYPED),
           "list of lines": vocabulary_from_items(LINES)}
    # YAML datasets files: class_names as a file path and inline
    yamls = [_yaml_entry(tmp_path, "t_v21_file", "classes.txt"),
             _yaml_entry(tmp_path, "t_v21_inline", LINES)]
    try:
        names = register_dataset_files(yamls)
        got.update({n: get_dataset_info(n).vocabulary for n in names})
    finally:
        for name in ("t_v21_file", "t_v21_inline"):
            unregister_dataset(name)
            register_files._REGISTERED_FROM.pop(name, None)
    # the builtin names file (Pascal Context 459's reader), here with 4 classes
    root = tmp_path / "d2"
    (root / "pascal_ctx_d2").mkdir(parents=True)
    _write(root, builtin.PASCAL_CONTEXT_459_NAMES, FILE)
    monkeypatch.setattr(builtin, "PASCAL_CONTEXT_459_CLASSES", 4)
    unregister_dataset("dataseg_pascal_context_459_val")
    try:
        builtin._pascal_context_459(root)
        got["builtin names file"] = get_dataset_info("dataseg_pascal_context_459_val").vocabulary
    finally:
        unregister_dataset("dataseg_pascal_context_459_val")
        monkeypatch.undo()
        builtin._pascal_context_459(builtin.default_root())
    # the config's vocabulary keys
    for key, value in (("VOCABULARY_FILE", str(file)), ("VOCABULARY_CLASSES", TYPED)):
        c = cfg.clone()
        c.MODEL.DATASEG.TEST[key] = value
        got[key] = default_vocabulary_from_cfg(c)
    # the web demo's field: the typed line, or the file's text pasted in the text area
    service = SegmentationService(cfg)
    got["web typed"] = service.vocabulary(TYPED, None)
    got["web pasted file"] = service.vocabulary(FILE, None)
    # demo.py / export_model.py options and the predictor (model reused)
    model = service.predictor.model
    for what, kwargs in (("--vocab", {"vocab": TYPED}), ("--vocab-file", {"vocab_file": file})):
        got[what] = predictor_from_args(cfg, model=model, **kwargs).vocabulary
    predictor = DaTaSegPredictor(cfg, vocabulary=LINES, model=model)
    got["DaTaSegPredictor(list)"] = predictor.vocabulary
    # export: the classes baked into the graph, as the exported model's predictor reads them
    export_model(predictor, tmp_path / "export", (64, 64), torchscript=False)
    got["export"] = ExportedPredictor(tmp_path / "export").vocabulary
    for what, vocab in got.items():
        assert vocab.class_synonyms == CLASSES, what
        assert vocab.is_thing == THINGS, what
        assert vocab.key == got["read_vocabulary"].key, what
    keys = {embedder.cache_key(v) for v in got.values()}
    assert len(keys) == 1
    # python -m dataseg.text (--names-file, --names) stores exactly that cache entry
    assert text_cli(["--names-file", str(file), "--names", *LINES,
                     "--cache-dir", str(tmp_path / "text_cache")]) == 0
    printed = re.findall(r"-> (\S+)\.pt", capsys.readouterr().out)
    assert [Path(p).name for p in printed] == [keys.pop()] * 2


def test_precomputed_vocabulary_needs_no_encoder_in_demo_and_web(tmp_path, tiny, monkeypatch):
    cfg, cfg_path = tiny
    file = _write(tmp_path, "classes.txt", FILE)
    # the encoder settings and cache folder of the config the demos run
    assert text_cli(["--names-file", str(file), "--config-file", str(cfg_path)]) == 0
    monkeypatch.setattr(text, "load_encoder", _no_encoder)
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    demo = _load_demo()
    for option, value in (("--vocab-file", str(file)), ("--vocab", TYPED)):
        out = tmp_path / option.strip("-")
        rc = demo.main(["--config-file", str(cfg_path), "--input", str(image), "--output",
                        str(out), option, value, "--task", "semantic"])
        assert rc == 0 and (out / "in_sem.png").is_file()
    service = SegmentationService(cfg)  # the model is built; no vocabulary is embedded
    for typed in (TYPED, FILE):
        vocab = service.vocabulary(typed, None)
        assert service.is_cached(vocab)
        answer = service.segment(image.read_bytes(), "in.png", vocab, "panoptic")
        assert answer["vocabulary"]["cached"] is True
        assert [c["name"] for c in answer["vocabulary"]["classes"]] == [c[0] for c in CLASSES]
    # a vocabulary not precomputed does need the encoder, and says so
    assert not service.is_cached(parse_vocabulary("zebra; okapi"))


# ------------------------------------------------------------------ duplicates, one rule
def test_duplicates_refused_in_every_entry_point_naming_both_positions(tmp_path, tiny, capsys):
    cfg, _ = tiny
    dup_file = _write(tmp_path, "dup.txt", "quokka\nwallaby\n# comment\nQuokka\n")
    cases = []
    with pytest.raises(DatasetFileError) as e:  # the example: accepted silently before
        register_dataset_files([_yaml_entry(tmp_path, "t_v21_dup", "[wallaby, quokka, quokka]")])
    cases.append((e.value, "class_names[1] and class_names[2]"))
    with pytest.raises(DatasetFileError) as e:
        register_dataset_files([_yaml_entry(tmp_path, "t_v21_dupf", "dup.txt")])
    cases.append((e.value, "line 1 and line 4"))
    with pytest.raises(ValueError) as e:
        register_panoptic_dataset("t_v21_dup_pan", tmp_path, tmp_path, tmp_path / "x.json",
                                  [{"id": 1, "name": "quokka"}, {"id": 2, "name": "quokka"}])
    cases.append((e.value, "categories[0] and categories[1]"))
    with pytest.raises(VocabularyError) as e:
        parse_vocabulary("quokka; wallaby; quokka")
    cases.append((e.value, "class 1 and class 3"))
    with pytest.raises(RequestError) as e:
        SegmentationService(cfg).vocabulary("quokka\nwallaby\nquokka", None)
    cases.append((e.value, "line 1 and line 3"))
    assert e.value.status == 400
    for err, positions in cases:
        message = str(err)
        assert "class name 'quokka' twice" in message.replace("'Quokka'", "'quokka'"), message
        assert positions in message and "\n" not in message, message
    assert "t_v21_dup" not in MetadataCatalog.list()
    # the text CLI and the demo: one line, exit status 2 for the demo
    with pytest.raises(SystemExit, match="dup.txt: class name 'Quokka' twice: line 1 and line 4"):
        text_cli(["--names-file", str(dup_file)])
    rc = _load_demo().main(["--config-file", QUICKSTART, "--input", str(tmp_path),
                            "--vocab-file", str(dup_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "line 1 and line 4" in err[0], err


# ------------------------------------------------------------------ config keys
def test_config_vocabulary_keys_and_the_deprecated_one(tiny, tmp_path, caplog, monkeypatch):
    cfg, _ = tiny
    c = cfg.clone()
    assert default_vocabulary_from_cfg(c) == "synth_pan_val"  # the first of DATASETS.TEST
    c.MODEL.DATASEG.TEST.VOCABULARY_DATASET = "synth_sem_val"
    assert default_vocabulary_from_cfg(c) == "synth_sem_val"
    c.MODEL.DATASEG.TEST.VOCABULARY_CLASSES = "cat; dog"
    with pytest.raises(ValueError, match="set only one of TEST.VOCABULARY_DATASET, "
                                         "TEST.VOCABULARY_CLASSES"):
        default_vocabulary_from_cfg(c)
    old = cfg.clone()
    old.MODEL.DATASEG.TEST.VOCABULARY = "synth_sem_panoptic_val"
    monkeypatch.setattr(logging.getLogger("dataseg"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="dataseg.config"):
        assert default_vocabulary_from_cfg(old) == "synth_sem_panoptic_val"
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    # (the same record may reach the capture twice where an earlier test set up logging)
    assert set(warned) == {"MODEL.DATASEG.TEST.VOCABULARY is deprecated: write "
                           "MODEL.DATASEG.TEST.VOCABULARY_DATASET synth_sem_panoptic_val"}


def test_inputs_without_a_dataset_name_use_the_configured_vocabulary_file(tiny, tmp_path):
    cfg, _ = tiny
    cfg = cfg.clone()
    cfg.MODEL.DATASEG.TEST.VOCABULARY_FILE = str(_write(tmp_path, "classes.txt", FILE))
    cfg.MODEL.DATASEG.TEST.TASK = "semantic"
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])[0]
    assert out["sem_seg"].shape[0] == len(CLASSES)
    name = model.default_vocabulary
    assert model.vocabulary.vocabulary(name).class_synonyms == CLASSES
    assert model.vocabulary.is_embedded(read_vocabulary(cfg.MODEL.DATASEG.TEST.VOCABULARY_FILE))


# ------------------------------------------------------------------ the documents
SYNTAX_SECTION = re.compile(r"^#+ Vocabulary syntax\n(.*?)(?=^#{2,4} )", re.S | re.M)
TYPED_EXAMPLES = [
    re.compile(r'--vocab "([^"]+)"'), re.compile(r'vocab=([^"\n]+)"'),
    re.compile(r'set_vocabulary\("([^"]+)"'), re.compile(r'vocabulary="([^"]+)"'),
    re.compile(r'VOCABULARY_CLASSES "([^"]+)"'),
]


def test_the_syntax_is_described_once_and_every_example_parses(tmp_path):
    home = (REPO / "docs" / "DATASETS.md").read_text()   # the syntax's one description
    others = {p.name: p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")]
              if p.name != "DATASETS.md"}
    sections = SYNTAX_SECTION.findall(home)
    assert len(sections) == 1
    assert [n for n, text in others.items() if SYNTAX_SECTION.findall(text)] == []
    # DESIGN points to it instead of describing it again
    assert "Vocabulary syntax" in others["DESIGN.md"]
    section = sections[0]
    blocks = re.findall(r"```text\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    example = read_vocabulary(_write(tmp_path, "example.txt", blocks[0]))
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    typed = [c for c in re.findall(r"`([^`]+)`", prose) if ";" in c and c.strip(";")]
    assert typed and all(parse_vocabulary(t).key == example.key for t in typed), typed
    found = [m for doc in (home, *others.values()) for rx in TYPED_EXAMPLES
             for m in rx.findall(doc)]
    assert len(found) >= 3
    for example in found:
        assert len(parse_vocabulary(example)) >= 1, example
    old = re.findall(r"refused with a line saying what to write.*?e\.g\.\s+`([^`]+)`", prose,
                     re.S)
    assert old == ["cat, sofa|couch, grass:stuff"]
    with pytest.raises(VocabularyError, match=re.escape("'cat; sofa|couch; grass:stuff'")):
        parse_vocabulary(old[0])
