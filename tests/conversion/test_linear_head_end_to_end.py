"""A converted Mask2Former model with the fixed-vocabulary linear head runs end to end with its
own classes: DaTaSegPredictor with the shipped config (configs/mask2former/) and a
synthesized model-zoo file; ONNX export; Detectron2's panoptic evaluation through
train_net.py --eval-only; and a vocabulary of another size is refused in one line."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from engine_helpers import REPO
from m2f_helpers import dataseg_cfg, hf_model, synthesized_m2f_checkpoint

import dataseg  # noqa: F401
from dataseg.data.synthetic import ensure_generated, register_synthetic_world
from dataseg.engine import AtomicCheckpointer, build_cfg
from dataseg.export import ExportedPredictor, compare_with_eager, export_model
from dataseg.predictor import DaTaSegPredictor

M2F_CONFIG = str(REPO / "configs" / "mask2former" / "m2f_r50_coco_panoptic.yaml")
SYNTH_PAN_CLASSES = 16  # synth_pan_val: 10 things, 6 stuff


@pytest.fixture(scope="module")
def zoo_pkl(tmp_path_factory):
    pkl = tmp_path_factory.mktemp("zoo") / "model_final.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(synthesized_m2f_checkpoint(seed=1), f)
    return pkl


SMALL_TEST = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
              "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL", "pytorch"]


def test_shipped_config_runs_a_model_zoo_file_with_coco_classes(zoo_pkl):
    cfg = build_cfg(M2F_CONFIG, ["MODEL.WEIGHTS", str(zoo_pkl)] + SMALL_TEST)
    p = DaTaSegPredictor(cfg)
    assert p.vocabulary_name == "dataseg_coco_2017_val_panoptic" and p.task == "panoptic"
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    out = p(image)
    seg, info = out["panoptic_seg"]
    assert tuple(seg.shape) == (60, 80) and out["sem_seg"].shape[0] == 133
    assert all(0 <= s["category_id"] < 133 for s in info)


def test_demo_runs_the_shipped_config(zoo_pkl, tmp_path):
    import importlib.util

    from PIL import Image
    spec = importlib.util.spec_from_file_location("dataseg_demo", REPO / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
        tmp_path / "street.png")
    out = tmp_path / "out"
    rc = demo.main(["--config-file", M2F_CONFIG, "--input", str(tmp_path / "street.png"),
                    "--output", str(out), "--opts", "MODEL.WEIGHTS", str(zoo_pkl)] + SMALL_TEST)
    assert rc == 0
    assert (out / "street.jpg").is_file() and (out / "panoptic" / "street.png").is_file()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A small HF Mask2Former for the synthetic world's 16 panoptic classes, saved as HF does,
    and the DaTaSeg config that runs it as Mask2Former on synth_pan_val."""
    tmp = tmp_path_factory.mktemp("linear")
    hf = hf_model(seed=2, classes=SYNTH_PAN_CLASSES)
    with torch.no_grad():  # confident classes, so that panoptic keeps segments
        hf.class_predictor.weight.mul_(20)
    from safetensors.torch import save_file
    path = tmp / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    cfg = dataseg_cfg(linear=True, classes=SYNTH_PAN_CLASSES)
    cfg.MODEL.WEIGHTS = str(path)
    cfg.DATASETS.TRAIN = ("synth_pan_val",)
    cfg.DATASETS.TEST = ("synth_pan_val",)
    cfg.DATASETS.SYNTHETIC.ROOT = str(tmp / "world")
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 64
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 3
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.OUTPUT_DIR = str(tmp / "out")
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    return tmp, cfg, hf


def test_predictor_gives_hf_logits_and_export_matches(converted):
    tmp, cfg, hf = converted
    p = DaTaSegPredictor(cfg, dataset="synth_pan_val")
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    x = p.preprocess(image)
    batch = p.model.preprocess([x]).tensor
    with torch.no_grad():
        logits, masks = p.model.network(batch, p.model.vocabulary.get("synth_pan_val")[0])
        ref = hf(batch)
    assert (logits - ref.class_queries_logits).abs().max() < 1e-4
    assert (masks - ref.masks_queries_logits).abs().max() < 1e-4
    out = p(image)
    assert out["sem_seg"].shape[0] == SYNTH_PAN_CLASSES and out["panoptic_seg"][1]
    result = export_model(p, tmp / "exp", (64, 64))
    exported = ExportedPredictor(tmp / "exp")
    stats = compare_with_eager(p, exported, [image])
    assert stats["max_abs_logit_diff"] <= 1e-3 and stats["max_abs_mask_diff"] <= 1e-3, stats
    assert result["onnx"].is_file()


def test_a_vocabulary_of_another_size_is_refused(converted):
    _, cfg, _ = converted
    model = build_model(cfg).eval()
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.set_vocabulary("five", torch.zeros(5, 8), [True] * 5)
    with pytest.raises(ValueError, match="has 5 classes but the fixed-vocabulary linear "
                                         "classifier was built for 16") as e:
        model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "dataset_name": "five"}])
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_train_net_eval_only_evaluates_the_converted_model(converted):
    tmp, cfg, _ = converted
    cfg_file = tmp / "m2f_small.yaml"
    cfg_file.write_text(cfg.dump())
    proc = subprocess.run([sys.executable, str(REPO / "train_net.py"), "--config-file",
                           str(cfg_file), "--eval-only"], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, DATASEG_NUM_THREADS="1"), timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "HF transformers Mask2Former checkpoint" in log
    assert "synth_pan_val | panoptic | panoptic_seg/PQ" in log
