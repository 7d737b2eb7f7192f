"""DaTaSeg fine-tuned from a Mask2Former model-zoo checkpoint, end to end: a synthesized file
with the keys and shapes of Mask2Former's R50 COCO panoptic model (random values) given as
MODEL.WEIGHTS to train_net.py, which co-trains on the quickstart's synthetic world for three
iterations (mask branch initialised from the file, text classifier from scratch) and
evaluates."""
import math
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch
from engine_helpers import QUICKSTART, REPO, tiny_opts
from m2f_helpers import synthesized_m2f_checkpoint

pytestmark = pytest.mark.slow

# Mask2Former's R50 COCO panoptic sizes (the quickstart's world, the tiny test schedule)
M2F_R50 = {
    "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.DATASEG.NUM_OBJECT_QUERIES": 100, "MODEL.DATASEG.HIDDEN_DIM": 256,
    "MODEL.DATASEG.NHEADS": 8, "MODEL.DATASEG.DIM_FEEDFORWARD": 2048,
    "MODEL.DATASEG.MASK_DIM": 256, "MODEL.DATASEG.DEC_LAYERS": 9,
    "MODEL.DATASEG.PIXEL_DECODER.CONVS_DIM": 256, "MODEL.DATASEG.PIXEL_DECODER.ENC_LAYERS": 6,
    "MODEL.DATASEG.PIXEL_DECODER.ENC_HEADS": 8,
    "MODEL.DATASEG.PIXEL_DECODER.ENC_DIM_FEEDFORWARD": 1024,
}


def test_train_net_fine_tunes_from_a_mask2former_model_zoo_file(tmp_path):
    ckpt = synthesized_m2f_checkpoint(seed=3)
    pkl = tmp_path / "model_final_m2f_r50_coco_panoptic.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(ckpt, f)
    out = tmp_path / "train"
    opts = tiny_opts(tmp_path, out, max_iter=3, test=("synth_pan_val",),
                     **{"MODEL.WEIGHTS": str(pkl), **M2F_R50})
    proc = subprocess.run([sys.executable, str(REPO / "train_net.py"), "--config-file",
                           QUICKSTART] + opts, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, DATASEG_NUM_THREADS="1"), timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    # the conversion report: every tensor but the criterion's buffer converted, the linear
    # classifier dropped, only the text classifier's parameters left to train
    assert "Mask2Former (Detectron2 layout) checkpoint, 557 tensors converted, 1 unused, " \
           "2 dropped, 5 model keys missing" in log
    assert "missing (trained from scratch): transformer_decoder.class_embed.* (4), " \
           "classifier.background.* (1)" in log
    losses = [float(v) for v in re.findall(r"total_loss: ([-\d.e+naif]+)", log)]
    assert losses and all(math.isfinite(v) for v in losses)
    assert "synth_pan_val | panoptic | panoptic_seg/PQ" in log
    trained = torch.load(out / "model_final.pth", weights_only=True)["model"]
    raw = ckpt["model"]
    # FrozenBN statistics are buffers: exactly the file's
    assert torch.equal(trained["backbone.res3.2.conv2.norm.running_var"],
                       torch.from_numpy(raw["backbone.res3.2.conv2.norm.running_var"]))
    # trained parameters started from the file: moved, but only by a few optimizer steps
    for dst, src in [("transformer_decoder.query_feat.weight",
                      "sem_seg_head.predictor.query_feat.weight"),
                     ("pixel_decoder.level_embed",
                      "sem_seg_head.pixel_decoder.transformer.level_embed")]:
        delta = (trained[dst] - torch.from_numpy(raw[src])).abs().max().item()
        assert 0 < delta < 0.01, (dst, delta)
