"""Tiny end-to-end configurations shared by the engine tests (real model, trainer, evaluators)."""
import contextlib
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")

TRAIN_SETS = ("synth_sem_train", "synth_pan_train", "synth_box_train")
TEST_SETS = ("synth_sem_val", "synth_pan_val", "synth_sem_panoptic_val", "synth_box_val_instance",
             "synth_unseen_sem_val")


def tiny_opts(tmp: Path, output_dir: Path, max_iter=4, train=TRAIN_SETS, test=TEST_SETS,
              batch=2, **overrides):
    """Config overrides for a model and world small enough to train in seconds on a CPU."""
    opts = {
        "DATASETS.SYNTHETIC.ROOT": str(tmp / "world"),
        "DATASETS.SYNTHETIC.IMAGE_SIZE": 64,
        "DATASETS.SYNTHETIC.NUM_SEMANTIC_TRAIN": 6,
        "DATASETS.SYNTHETIC.NUM_PANOPTIC_TRAIN": 6,
        "DATASETS.SYNTHETIC.NUM_BOX_TRAIN": 6,
        "DATASETS.SYNTHETIC.NUM_VAL": 3,
        "DATASETS.TRAIN": str(tuple(train)),
        "DATASETS.TRAIN_RATIOS": str([1.0] * len(train)),
        "DATASETS.TRAIN_AUGMENTATIONS": str(["resize_crop" if "sem" in t else "lsj"
                                             for t in train]),
        "DATASETS.TEST": str(tuple(test)),
        "MODEL.BACKBONE.NAME": "build_resnet_backbone",
        "MODEL.RESNETS.DEPTH": 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.RESNETS.NORM": "FrozenBN",
        "MODEL.PIXEL_MEAN": "[123.675, 116.28, 103.53]",
        "MODEL.PIXEL_STD": "[58.395, 57.12, 57.375]",
        "MODEL.DATASEG.NUM_OBJECT_QUERIES": 8,
        "MODEL.DATASEG.HIDDEN_DIM": 32,
        "MODEL.DATASEG.NHEADS": 2,
        "MODEL.DATASEG.DIM_FEEDFORWARD": 64,
        "MODEL.DATASEG.MASK_DIM": 32,
        "MODEL.DATASEG.DEC_LAYERS": 3,
        "MODEL.DATASEG.PIXEL_DECODER.CONVS_DIM": 32,
        "MODEL.DATASEG.PIXEL_DECODER.ENC_LAYERS": 1,
        "MODEL.DATASEG.PIXEL_DECODER.ENC_HEADS": 2,
        "MODEL.DATASEG.PIXEL_DECODER.ENC_DIM_FEEDFORWARD": 64,
        "MODEL.DATASEG.TRAIN_NUM_POINTS": 256,
        "MODEL.TEXT_ENCODER.CACHE_DIR": str(tmp / "text_cache"),
        "INPUT.LSJ.IMAGE_SIZE": 64,
        "INPUT.RESIZE_CROP.MIN_SIZE_TRAIN": "(56, 64, 72)",
        "INPUT.RESIZE_CROP.CROP_SIZE": 64,
        "INPUT.MIN_SIZE_TEST": 64,
        "INPUT.MAX_SIZE_TEST": 128,
        "SOLVER.IMS_PER_BATCH": batch,
        "SOLVER.MAX_ITER": max_iter,
        "SOLVER.WARMUP_ITERS": 0,
        "SOLVER.CHECKPOINT_PERIOD": 1000,
        "DATALOADER.NUM_WORKERS": 0,
        "SEED": 7,
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update(overrides)
    flat = []
    for k, v in opts.items():
        flat += [k, str(v)]
    return flat


def train_until(cfg, trainer_cls=None, resume=False, stop_at=None):
    """Trains ``cfg`` with Detectron2's loop (``DaTaSegTrainer`` unless ``trainer_cls``),
    seeded as train_net.py's default_setup does; ``stop_at``: interrupted after that iteration
    (a KeyboardInterrupt, as a killed run). Returns (trainer, a copy of the final weights)."""
    from detectron2.engine import HookBase
    from detectron2.utils.env import seed_all_rng

    from dataseg.engine import DaTaSegTrainer

    class StopAt(HookBase):
        def after_step(self):
            if self.trainer.iter == stop_at:
                raise KeyboardInterrupt("simulated interruption")

    seed_all_rng(cfg.SEED)
    trainer = (trainer_cls or DaTaSegTrainer)(cfg)
    if stop_at is not None:
        trainer.register_hooks([StopAt()])
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass
    return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def train_tiny(tmp: Path, output_dir: Path, max_iter: int):
    """A tiny quickstart model co-trained ``max_iter`` iterations on its own small synthetic
    world under ``tmp``; returns its config (OUTPUT_DIR ``output_dir``)."""
    from dataseg.data.synthetic import ensure_generated, register_synthetic_world
    from dataseg.engine import build_cfg

    cfg = build_cfg(QUICKSTART, tiny_opts(tmp, output_dir, max_iter=max_iter))
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    train_until(cfg)
    return cfg


def all_finite(rows):
    return all(math.isfinite(r["value"]) for r in rows)


def write_random_semantic(root: Path, n: int, num_classes: int, size=(32, 40)):
    """``root/img/<k>.jpg`` random images and ``root/lbl/<k>.png`` random labels in
    [0, num_classes), k < n (seeded). Returns (image_root, label_root)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    (root / "lbl").mkdir()
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / "img" / f"{k}.jpg")
        Image.fromarray(rng.integers(0, num_classes, size, dtype=np.uint8)).save(
            root / "lbl" / f"{k}.png")
    return root / "img", root / "lbl"


@contextlib.contextmanager
def collect_logs(*names, level=logging.INFO):
    """The messages logged to the loggers ``names`` (and their children) at ``level`` or above
    meanwhile, by a handler of its own: Detectron2's setup_logger (run by a train_net.py set-up
    in this process) stops "dataseg" and "detectron2" from propagating to pytest's caplog."""
    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Collect(level)
    loggers = [logging.getLogger(n) for n in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        if not log.isEnabledFor(level):
            log.setLevel(level)
    try:
        yield messages
    finally:
        for log, old in zip(loggers, levels):
            log.removeHandler(handler)
            log.setLevel(old)
