"""MODEL.VIT.WEIGHTS, Detectron2's way: building a model reads no file; the MAE / timm ViT
weights are loaded when a training starts from them (``DaTaSegTrainer.resume_or_load``), not
when it resumes or starts from a DaTaSeg checkpoint (MODEL.WEIGHTS) that holds the ViT, and never
for --eval-only, DefaultPredictor or export, which take MODEL.WEIGHTS only."""
from pathlib import Path

import cv2
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from engine_helpers import REPO, tiny_opts
from timm.models.vision_transformer import VisionTransformer

from dataseg.data.synthetic import ensure_generated, register_synthetic_world
from dataseg.engine import AtomicCheckpointer, DaTaSegTrainer, build_cfg

pytestmark = pytest.mark.slow

TINY_VIT = str(REPO / "configs" / "quickstart_vitdet_tiny.yaml")
PATCH_KEY = "backbone.vit.patch_embed.proj.weight"


def _cfg(tmp: Path, out: str, **opts):
    opts = {"MODEL.BACKBONE.NAME": "build_vitdet_backbone", "MODEL.DEVICE": "cpu", **opts}
    cfg = build_cfg(TINY_VIT, tiny_opts(tmp, tmp / out, max_iter=1, test=("synth_pan_val",),
                                        **opts))
    register_synthetic_world(cfg)
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world and an MAE-layout file for the tiny ViTDet config's trunk."""
    tmp = tmp_path_factory.mktemp("vit_pretrained")
    cfg = _cfg(tmp, "unused")
    ensure_generated(cfg)
    v = cfg.MODEL.VIT
    torch.manual_seed(3)
    src = VisionTransformer(img_size=v.PRETRAIN_IMG_SIZE, patch_size=16, embed_dim=v.EMBED_DIM,
                            depth=v.DEPTH, num_heads=v.NUM_HEADS).state_dict()
    mae = tmp / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": {k: t for k, t in src.items() if not k.startswith("head")}}, str(mae))
    return tmp, mae, src


def _patch(model) -> torch.Tensor:
    return model.state_dict()[PATCH_KEY]


def test_training_start_loads_the_vit_weights_building_reads_no_file(world, tmp_path):
    tmp, mae, src = world
    missing = str(tmp_path / "nowhere" / "mae.pth")
    # building (a model, a trainer) reads no weights file, even a missing one
    model = build_model(_cfg(tmp, "a", **{"MODEL.VIT.WEIGHTS": missing}))
    assert not torch.equal(_patch(model), src["patch_embed.proj.weight"])
    trainer = DaTaSegTrainer(_cfg(tmp, "a", **{"MODEL.VIT.WEIGHTS": missing}))
    with pytest.raises(FileNotFoundError, match="nowhere/mae.pth"):
        trainer.resume_or_load(resume=False)  # ... the training start does
    trainer = DaTaSegTrainer(_cfg(tmp, "b", **{"MODEL.VIT.WEIGHTS": str(mae)}))
    assert not torch.equal(_patch(trainer.model), src["patch_embed.proj.weight"])
    trainer.resume_or_load(resume=False)
    assert torch.equal(_patch(trainer.model), src["patch_embed.proj.weight"])
    report = trainer.vit_load_report  # the conversion's report, as before
    assert "cls_token" in report["unused"] and report["missing"] == report["new_in_vitdet"]


def test_trained_checkpoint_needs_no_vit_file(world, tmp_path):
    tmp, mae, src = world
    trainer = DaTaSegTrainer(_cfg(tmp, "train", **{"MODEL.VIT.WEIGHTS": str(mae)}))
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = tmp / "train" / "model_final.pth"
    trained = torch.load(str(final), map_location="cpu", weights_only=False)["model"]
    assert not torch.equal(trained[PATCH_KEY], src["patch_embed.proj.weight"])  # it trained
    gone = str(tmp_path / "deleted" / "mae.pth")

    # --eval-only (train_net.py's path), DefaultPredictor: MODEL.WEIGHTS only
    cfg = _cfg(tmp, "eval", **{"MODEL.VIT.WEIGHTS": gone, "MODEL.WEIGHTS": str(final)})
    model = DaTaSegTrainer.build_model(cfg)
    AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                      resume=False)
    assert torch.equal(_patch(model), trained[PATCH_KEY])
    cfg.defrost()
    cfg.MODEL.DATASEG.TEST.VOCABULARY_DATASET = "synth_pan_val"
    image = cv2.imread(DatasetCatalog.get("synth_pan_val")[0]["file_name"])
    assert "panoptic_seg" in DefaultPredictor(cfg)(image)

    # fine-tuning from the DaTaSeg checkpoint: the ViT comes from it, the MAE file is not read
    trainer = DaTaSegTrainer(_cfg(tmp, "tune", **{"MODEL.VIT.WEIGHTS": gone,
                                                  "MODEL.WEIGHTS": str(final)}))
    trainer.resume_or_load(resume=False)
    assert torch.equal(_patch(trainer.model), trained[PATCH_KEY])
    assert trainer.vit_load_report is None

    # resuming: the last checkpoint has everything
    trainer = DaTaSegTrainer(_cfg(tmp, "train", **{"MODEL.VIT.WEIGHTS": gone}))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 1 and trainer.vit_load_report is None
    assert torch.equal(_patch(trainer.model), trained[PATCH_KEY])
