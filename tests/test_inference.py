"""Inference for Detectron2 users on a tiny model trained here: DefaultPredictor, the predictor
with run-time vocabularies, Visualizer metadata, the demo and its output files, the export."""
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer
from engine_helpers import QUICKSTART, REPO, train_tiny
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools.coco import COCO

import dataseg  # noqa: F401
from dataseg.data.register import register_panoptic_dataset, unregister_dataset
from dataseg.engine import AtomicCheckpointer
from dataseg.export import ExportedPredictor, compare_with_eager, export_model
from dataseg.predictor import (
    DaTaSegPredictor,
    VocabularyError,
    as_vocabulary,
    parse_vocabulary,
    read_vocabulary,
)
from dataseg.text import embed_vocabulary, text_encoder_kwargs_from_cfg

pytestmark = pytest.mark.slow


def _load_demo():
    spec = importlib.util.spec_from_file_location("dataseg_demo", REPO / "demo" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model co-trained 4 iterations by Detectron2's trainer; returns its config."""
    tmp = tmp_path_factory.mktemp("inference")
    cfg = train_tiny(tmp, tmp / "train", max_iter=4)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp / "train" / "model_final.pth")
    cfg.MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL = "pytorch"
    return tmp, cfg


def _val_images(n=3, name="synth_pan_val"):
    return [d["file_name"] for d in DatasetCatalog.get(name)[:n]]


# --------------------------------------------------------------- vocabulary text
def test_parse_vocabulary_synonyms_and_stuff_marks(tmp_path):
    v = parse_vocabulary(" cat ; sofa | couch;grass : stuff; tree:thing")
    assert v.class_synonyms == (("cat",), ("sofa", "couch"), ("grass",), ("tree",))
    assert v.is_thing == (True, True, False, True)
    f = tmp_path / "v.txt"
    f.write_text("# my classes\ncat\n\nsofa|couch\ngrass:stuff\n")
    assert read_vocabulary(f).key == parse_vocabulary("cat;sofa|couch;grass:stuff").key
    v = as_vocabulary(["cat", ["sofa", "couch"], "grass"], stuff=["COUCH", "grass"])
    assert v.is_thing == (True, False, False)
    for bad, match in (("", "empty"), ("cat,,dog", "separate classes with ';'"),
                       ("cat;dog:solid", ":solid"),
                       ("cat; Cat", "class name 'Cat' twice: class 1 and class 2"),
                       ("a|", "empty name")):
        with pytest.raises(VocabularyError, match=match):
            parse_vocabulary(bad)
    # a synonym may repeat another class's synonym, not its name (ADE shares "screen")
    assert len(parse_vocabulary("screen door|screen; blind|screen")) == 2
    f.write_text("# nothing\n\n")
    with pytest.raises(VocabularyError, match="v.txt.*empty"):
        read_vocabulary(f)
    with pytest.raises(VocabularyError, match="not a class"):
        as_vocabulary("cat;dog", stuff=["grass"])


# --------------------------------------------------------------- DefaultPredictor
@pytest.mark.parametrize("task,keys", [("semantic", {"sem_seg"}),
                                       ("panoptic", {"panoptic_seg", "sem_seg"}),
                                       ("instance", {"instances"})])
def test_default_predictor_each_task(trained, task, keys):
    _, cfg = trained
    cfg = cfg.clone()
    cfg.MODEL.DATASEG.TEST.TASK = task
    cfg.MODEL.DATASEG.TEST.VOCABULARY_DATASET = "synth_pan_val"
    image = cv2.imread(_val_images(1)[0])
    image = cv2.resize(image, (80, 56))  # not the training size, not square
    out = DefaultPredictor(cfg)(image)
    assert set(out) == keys
    k = len(MetadataCatalog.get("synth_pan_val").stuff_classes)
    if "sem_seg" in out:
        assert tuple(out["sem_seg"].shape) == (k, 56, 80)
    if "panoptic_seg" in out:
        seg, infos = out["panoptic_seg"]
        assert tuple(seg.shape) == (56, 80)
        assert {int(i) for i in seg.unique()} - {0} <= {s["id"] for s in infos}
    if "instances" in out:
        inst = out["instances"]
        assert inst.image_size == (56, 80) and len(inst) > 0
        assert int(inst.pred_classes.max()) < k


def test_default_predictor_uses_first_test_set_and_says_which_key_is_missing(trained):
    _, cfg = trained
    image = cv2.imread(_val_images(1)[0])
    out = DefaultPredictor(cfg)(image)  # DATASETS.TEST[0] = synth_sem_val: semantic
    assert set(out) == {"sem_seg"}
    assert out["sem_seg"].shape[0] == len(MetadataCatalog.get("synth_sem_val").stuff_classes)
    cfg = cfg.clone()
    cfg.DATASETS.TEST = ()
    with pytest.raises(KeyError, match="MODEL.DATASEG.TEST.VOCABULARY"):
        DefaultPredictor(cfg)(image)


def test_documented_set_vocabulary_snippet_runs_as_written(trained):
    _, cfg = trained
    model = build_model(cfg).eval()
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    text_embeddings_KxD = embed_vocabulary([["zebra"], ["lawn"]],
                                           **text_encoder_kwargs_from_cfg(cfg))
    img = cv2.imread(_val_images(1)[0])[:, :, ::-1]
    h, w = img.shape[:2]
    img_chw_uint8 = torch.as_tensor(img.transpose(2, 0, 1).copy())
    # --- README "In your own pipeline" ---
    model.set_vocabulary("my_vocab", text_embeddings_KxD, is_thing=[True, False])
    with torch.no_grad():
        outputs = model([{"image": img_chw_uint8, "height": h, "width": w,
                          "dataset_name": "my_vocab"}])
    assert set(outputs[0]) == {"panoptic_seg", "sem_seg"}
    assert outputs[0]["sem_seg"].shape == (2, h, w)
    model.set_vocabulary("my_vocab", text_embeddings_KxD, is_thing=[True, True],
                         task="instance")
    with torch.no_grad():
        out = model([{"image": img_chw_uint8, "dataset_name": "my_vocab"}])[0]
    assert set(out) == {"instances"}


# --------------------------------------------------------------- DaTaSegPredictor
def test_predictor_with_a_vocabulary_the_checkpoint_never_saw(trained):
    _, cfg = trained
    p = DaTaSegPredictor(cfg, vocabulary=["zebra", ["sofa", "couch"], "lawn"], stuff=["lawn"],
                         task="panoptic")
    image = cv2.imread(_val_images(1)[0])
    out = p(image)
    assert out["sem_seg"].shape == (3, *image.shape[:2])
    seg, infos = out["panoptic_seg"]
    assert all(0 <= s["category_id"] < 3 for s in infos)
    assert all(s["isthing"] == (s["category_id"] != 2) for s in infos)
    assert p.metadata.thing_classes == ["zebra", "sofa", "lawn"]
    model = p.model
    p.set_vocabulary("dog; tree:stuff; sky|heaven:stuff; road:stuff", task="semantic")
    assert p.model is model  # no rebuild
    assert p(image)["sem_seg"].shape[0] == 4
    p.use_dataset("synth_pan_val")
    assert p.task == "panoptic" and p.model is model
    with pytest.raises(KeyError, match="no_such_dataset"):
        p.use_dataset("no_such_dataset")


class _TextRecorder(Visualizer):
    """Detectron2's Visualizer, recording the labels it draws."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.texts = []

    def draw_text(self, text, *a, **k):
        self.texts.append(text)
        return super().draw_text(text, *a, **k)


def _two_segment_panoptic():
    seg = torch.zeros(40, 60, dtype=torch.int32)
    seg[:, :30] = 1
    seg[:, 30:] = 2
    infos = [{"id": 1, "category_id": 1, "isthing": True, "score": 0.9},
             {"id": 2, "category_id": 2, "isthing": False}]
    return seg, infos


def test_visualizer_names_things_listed_in_the_middle(trained, tmp_path):
    """Contiguous ids index all classes; a thing between stuff classes must be named right
    (before the fix: thing_classes held only things, so id 1 was out of range)."""
    _, cfg = trained
    seg, infos = _two_segment_panoptic()
    image = np.zeros((40, 60, 3), np.uint8)
    p = DaTaSegPredictor(cfg, vocabulary="sky:stuff; dog; road:stuff")
    registered = "t_vis_things_middle"
    register_panoptic_dataset(registered, tmp_path, tmp_path, tmp_path / "x.json",
                              [{"id": 5, "name": "sky", "isthing": 0},
                               {"id": 9, "name": "dog", "isthing": 1},
                               {"id": 7, "name": "road", "isthing": 0}], replace=True)
    try:
        for meta in (p.metadata, MetadataCatalog.get(registered)):
            vis = _TextRecorder(image, meta)
            vis.draw_panoptic_seg(seg, infos)
            assert any(t.startswith("dog") for t in vis.texts), vis.texts
            assert "road" in vis.texts, vis.texts
            vis = _TextRecorder(image, meta)
            vis.draw_sem_seg(torch.tensor([[0, 1, 2]]).repeat_interleave(20, 1)
                             .repeat(40, 1))
            assert {"sky", "dog", "road"} <= set(vis.texts)
    finally:
        unregister_dataset(registered)


# --------------------------------------------------------------- demo
def test_demo_on_a_folder_writes_every_file_and_skips_bad_inputs(trained, tmp_path, capsys):
    _, cfg = trained
    demo = _load_demo()
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(_val_images(2)):
        Image.open(f).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    opts = ["--opts", "MODEL.DEVICE", "cpu"]  # the last option, as in Detectron2's demo
    out = tmp_path / "pan"
    rc = demo.main(["--config-file", str(config), "--input", str(folder), "--output", str(out),
                    "--vocab", "zebra; sofa|couch; lawn:stuff", "--task", "panoptic",
                    "--confidence-threshold", "0.0"] + opts)
    text = capsys.readouterr()
    assert rc == 1
    assert f"skipped {folder / 'broken.png'}" in text.err
    assert "2 of 3 inputs done, 1 skipped" in text.out
    for i in range(2):
        assert (out / f"img{i}.jpg").is_file()
        sem = np.asarray(Image.open(out / f"img{i}_sem.png"))
        assert sem.dtype == np.uint8 and sem.max() < 3
    pan = json.loads((out / "panoptic.json").read_text())
    assert len(pan["annotations"]) == 2 and len(pan["categories"]) == 3
    for ann in pan["annotations"]:
        ids = rgb2id(np.asarray(Image.open(out / "panoptic" / ann["file_name"])))
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
        for s in ann["segments_info"]:
            assert s["area"] == int((ids == s["id"]).sum())

    out = tmp_path / "inst"
    rc = demo.main(["--config-file", str(config), "--input", str(folder / "img*.png"),
                    "--output", str(out), "--dataset", "synth_pan_val", "--task",
                    "instance"] + opts)
    assert rc == 0, capsys.readouterr()
    gt = COCO(str(out / "coco_images.json"))
    dets = gt.loadRes(str(out / "instances_results.json"))
    assert len(dets.getAnnIds()) > 0
    valid_ids = {c["id"] for c in json.loads((out / "coco_images.json").read_text())
                 ["categories"]}
    assert {a["category_id"] for a in dets.dataset["annotations"]} <= valid_ids


@pytest.mark.parametrize("args,match", [
    (["--vocab", " , "], "empty"),
    (["--dataset", "no_such_dataset"], "no_such_dataset"),
    (["--vocab-file", "/nonexistent/vocab.txt"], "/nonexistent/vocab.txt"),
    (["--vocab", "a", "--dataset", "synth_pan_val"], "only one of"),
])
def test_demo_bad_vocabulary_one_clear_line(tmp_path, capsys, args, match):
    rc = _load_demo().main(["--config-file", QUICKSTART, "--input", str(tmp_path),
                            "--output", str(tmp_path / "o")] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and match in err[0], err


# --------------------------------------------------------------- export
def test_export_matches_eager_model(trained, tmp_path):
    _, cfg = trained
    p = DaTaSegPredictor(cfg, dataset="synth_pan_val")
    result = export_model(p, tmp_path / "exp", (64, 64))
    assert result["onnx"].is_file()
    exported = ExportedPredictor(tmp_path / "exp")
    images = [cv2.imread(f) for f in _val_images(3)]
    stats = compare_with_eager(p, exported, images)
    assert stats["max_abs_logit_diff"] <= 1e-3 and stats["max_abs_mask_diff"] <= 1e-3, stats
    assert stats["argmax_agreement"] >= 0.999, stats
    # the exported predictor gives the eager predictor's outputs through the shared
    # post-processing
    a, b = p(images[0]), exported(images[0])
    assert set(a) == set(b) == {"panoptic_seg", "sem_seg"}
    assert (a["sem_seg"].argmax(0) == b["sem_seg"].argmax(0)).float().mean() >= 0.999
    if result["torchscript"] is not None:
        ts = torch.jit.load(str(result["torchscript"]))
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            ref = p.model.network(x, p.model.vocabulary.get("synth_pan_val")[0])
            got = ts(x)
        assert torch.allclose(ref[0], got[0], atol=1e-4)
