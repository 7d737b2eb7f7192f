"""Builds DaTaSeg from a tiny config and runs training and inference on CPU for every task."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import dataseg.modeling  # noqa: F401  (registers DaTaSeg)
from dataseg.config import add_dataseg_config
from dataseg.modeling.merge import merge_for_task

K, D = 5, 16
IS_THING = [True, True, True, False, False]


def tiny_cfg():
    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.merge_from_file(str(Path(__file__).resolve().parents[2] / "configs" / "Base-DaTaSeg.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "DaTaSeg"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    d = cfg.MODEL.DATASEG
    d.NUM_OBJECT_QUERIES = 8
    d.HIDDEN_DIM = 32
    d.NHEADS = 4
    d.DIM_FEEDFORWARD = 64
    d.DEC_LAYERS = 3
    d.MASK_DIM = 32
    d.PIXEL_DECODER.CONVS_DIM = 32
    d.PIXEL_DECODER.ENC_LAYERS = 1
    d.PIXEL_DECODER.ENC_HEADS = 4
    d.PIXEL_DECODER.ENC_POINTS = 2
    d.PIXEL_DECODER.ENC_DIM_FEEDFORWARD = 64
    d.PIXEL_DECODER.DEFORM_ATTN_IMPL = "pytorch"
    d.CLASSIFIER.TEXT_DIM = D
    d.TRAIN_NUM_POINTS = 64
    d.TEST.INSTANCES_PER_IMAGE = 10
    cfg.DATASETS.TRAIN = ("tiny_sem", "tiny_pan", "tiny_box")
    cfg.DATASETS.TRAIN_LOSS_WEIGHTS = [1.0, 1.0, 0.5]
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(tiny_cfg())
    emb = torch.randn(K, D)
    for name in ("tiny_sem", "tiny_pan", "tiny_box"):
        m.set_vocabulary(name, emb, IS_THING)
    return m


def _image(h=64, w=80):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8)


def _input(name, task, masks=None, classes=(), boxes=None, h=64, w=80):
    inst = Instances((h, w))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if boxes is None:
        boxes = torch.zeros(len(classes), 4)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    if masks is not None:
        inst.gt_masks = masks
    return {"image": _image(h, w), "dataset_name": name, "task": task, "height": h, "width": w,
            "image_id": 0, "file_name": "x.png", "instances": inst}


def _sem_batch():
    m = torch.zeros(2, 64, 80, dtype=torch.bool)
    m[0, :32] = True
    m[1, 32:] = True
    # second image without annotations
    return [_input("tiny_sem", "semantic", m, [3, 0]),
            _input("tiny_sem", "semantic", torch.zeros(0, 64, 80, dtype=torch.bool), [])]


def _pan_batch():
    m = torch.zeros(3, 64, 80, dtype=torch.bool)
    m[0, 10:30, 10:30] = True
    m[1, 35:60, 40:70] = True
    m[2] = ~(m[0] | m[1])
    return [_input("tiny_pan", "panoptic", m, [0, 1, 4])]


def _box_batch():
    return [_input("tiny_box", "box", None, [1, 2], [[4, 4, 30, 40], [40, 10, 76, 60]]),
            _input("tiny_box", "box", None, [], None)]


@pytest.mark.parametrize("batch_fn", [_sem_batch, _pan_batch, _box_batch])
def test_train_forward_backward(model, batch_fn):
    model.train()
    model.zero_grad()
    losses = model(batch_fn())
    assert "loss_ce" in losses and "loss_ce_0" in losses
    mask_keys = {"loss_focal", "loss_dice"} if batch_fn is not _box_batch else {"loss_proj"}
    assert mask_keys <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.classifier.background.grad is not None


def test_box_loss_weight_applies(model):
    model.train()
    torch.manual_seed(1)
    a = model(_box_batch())
    model.dataset_loss_weights["tiny_box"] = 1.0
    torch.manual_seed(1)
    b = model(_box_batch())
    model.dataset_loss_weights["tiny_box"] = 0.5
    torch.testing.assert_close(a["loss_ce"] * 2, b["loss_ce"])


def test_empty_image_losses_finite(model):
    model.train()
    batch = [_input("tiny_pan", "panoptic", torch.zeros(0, 64, 80, dtype=torch.bool), [])]
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_focal"]) == 0.0 and float(losses["loss_ce"]) > 0


def test_mixed_datasets_rejected(model):
    model.train()
    with pytest.raises(ValueError, match="one dataset"):
        model(_sem_batch()[:1] + _pan_batch())


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance", "box"])
def test_inference_formats(model, task):
    model.eval()
    name = {"semantic": "tiny_sem", "panoptic": "tiny_pan"}.get(task, "tiny_box")
    inputs = [{"image": _image(60, 70), "dataset_name": name, "task": task, "height": 90,
               "width": 105, "image_id": 0, "file_name": "x.png"}]
    with torch.no_grad():
        out = model(inputs)[0]
    if task == "semantic":
        assert out["sem_seg"].shape == (K, 90, 105)
    elif task == "panoptic":
        seg, info = out["panoptic_seg"]
        assert seg.shape == (90, 105)
        ids = set(seg.unique().tolist()) - {0}
        assert ids <= {s["id"] for s in info}
        assert out["sem_seg"].shape == (K, 90, 105)
    else:
        inst = out["instances"]
        assert inst.image_size == (90, 105)
        assert len(inst) == 10
        assert inst.pred_masks.shape == (10, 90, 105) and inst.pred_masks.dtype == torch.bool
        assert inst.pred_boxes.tensor.shape == (10, 4)
        assert (inst.pred_classes < K).all() and (inst.scores >= 0).all()


def test_eval_decoder_matches_training_path(model):
    """The cheap inference path (attention masks from resized mask features) gives the same
    final prediction as the deep-supervision path."""
    model.eval()
    images = model.preprocess([{"image": _image(64, 96)}])
    with torch.no_grad():
        mf, ms = model.pixel_decoder(model.backbone(images.tensor))
        a = model.transformer_decoder(ms, mf, return_aux=False)
        b = model.transformer_decoder(ms, mf, return_aux=True)
    torch.testing.assert_close(a["pred_masks"], b["pred_masks"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a["class_embeds"], b["class_embeds"], atol=1e-4, rtol=1e-4)
    assert len(b["aux_outputs"]) == model.transformer_decoder.num_layers


def test_merge_used_per_task(model):
    logits = torch.randn(1, 8, K + 1)
    masks = torch.randn(1, 8, 4, 4)
    thing = torch.tensor(IS_THING)
    assert merge_for_task(logits, masks, "semantic", thing)["num_merged"] == K
    assert merge_for_task(logits, masks, "panoptic", thing)["num_merged"] == 2
    assert merge_for_task(logits, masks, "box", thing)["num_merged"] == 0


def test_vocabulary_not_in_checkpoint_and_swappable(model):
    assert not any("vocab" in k for k in model.state_dict())
    assert "classifier.background" in model.state_dict()
    model.eval()
    model.set_vocabulary("tiny_other", torch.randn(7, D), [False] * 7)
    inputs = [{"image": _image(), "dataset_name": "tiny_other", "task": "semantic",
               "height": 64, "width": 80}]
    with torch.no_grad():
        assert model(inputs)[0]["sem_seg"].shape == (7, 64, 80)
    with pytest.raises(ValueError, match="text dim"):
        model.set_vocabulary("bad", torch.randn(3, D + 1), [True] * 3)


def test_bad_class_id_names_image(model):
    model.train()
    batch = _pan_batch()
    batch[0]["instances"].gt_classes[0] = K + 3
    batch[0]["image_id"] = "img_42"
    with pytest.raises(ValueError, match="img_42"):
        model(batch)


def test_channels_last_is_the_same_model():
    """MODEL.DATASEG.CHANNELS_LAST stores 4-D weights NHWC: same losses, gradients and
    inference as the NCHW model with the same weights (rounding only), checkpoints swap."""
    models = {}
    # distinct classes (equal embeddings tie in matching and amplify rounding differences)
    emb = torch.randn(K, D, generator=torch.Generator().manual_seed(3))
    for cl in (False, True):
        cfg = tiny_cfg()
        cfg.MODEL.DATASEG.CHANNELS_LAST = cl
        torch.manual_seed(0)
        models[cl] = build_model(cfg)
        for name in ("tiny_sem", "tiny_pan", "tiny_box"):
            models[cl].set_vocabulary(name, emb, IS_THING)
    plain, nhwc = models[False], models[True]
    conv = plain.backbone.stem.conv1.weight
    assert conv.is_contiguous()
    assert nhwc.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc.load_state_dict(plain.state_dict())  # a checkpoint of either layout loads in the other
    assert nhwc.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for batch_fn in (_sem_batch, _pan_batch, _box_batch):
        torch.manual_seed(1)
        batch = batch_fn()
        out = {}
        for cl, m in models.items():
            m.train()
            m.zero_grad()
            torch.manual_seed(2)  # the same sampled points
            losses = m(batch)
            sum(losses.values()).backward()
            out[cl] = (losses, {n: p.grad for n, p in m.named_parameters() if p.grad is not None})
        for k, v in out[False][0].items():
            assert torch.allclose(v, out[True][0][k], rtol=1e-4, atol=1e-5), (batch_fn, k)
        assert out[False][1].keys() == out[True][1].keys()
        for n, g in out[False][1].items():
            # rounding: an element's absolute error scales with the tensor's magnitude (the
            # stem's gradients reach ~2, accumulated through the whole network)
            atol = 1e-5 * max(1.0, float(g.abs().max()))
            assert torch.allclose(g, out[True][1][n], rtol=1e-3, atol=atol), (batch_fn, n)
    for m in models.values():
        m.eval()
    x = [{"image": _image(), "dataset_name": "tiny_pan", "task": "semantic", "height": 64,
          "width": 80}]
    with torch.no_grad():
        a, b = plain(x)[0]["sem_seg"], nhwc(x)[0]["sem_seg"]
    assert torch.allclose(a, b, atol=1e-4)
