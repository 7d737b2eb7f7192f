"""Whole-network agreement between DaTaSeg with converted weights and HF transformers'
``Mask2FormerForUniversalSegmentation`` (randomly initialised, small, ResNet backbone), eval
mode, fp32, batch 2, two input sizes (one not a multiple of 32): backbone features, the pixel
decoder's multi-scale features and mask features, every decoder layer's mask logits and class
logits (fixed-vocabulary linear head), within 1e-4 max abs. Then the semantic, instance and
panoptic outputs against HF's post-processing, each difference explained by a rule of
docs/MASK2FORMER_WEIGHTS.md."""
import pytest
import torch
from detectron2.modeling import build_model
from m2f_helpers import SMALL, dataseg_cfg, hf_model, pairs

import dataseg  # noqa: F401
from dataseg.conversion import convert_state_dict
from dataseg.modeling.meta_arch import postprocess_logits
from dataseg.modeling.postprocessing import resize_mask_logits

pytest.importorskip("transformers")

TOL = 1e-4
SIZES = [(64, 64), (72, 88)]  # 72 x 88 is not a multiple of 32


@pytest.fixture(scope="module")
def pair():
    hf = hf_model(seed=0)
    model = build_model(dataseg_cfg(linear=True)).eval()
    state, report = convert_state_dict(hf.state_dict(), "hf-small", model)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return hf, model, report


def _max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def outputs(request, pair):
    hf, model, _ = pair
    x = torch.randn(2, 3, *request.param, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.backbone(x)
        mask_features, multi_scale = model.pixel_decoder(feats)
        dec = model.transformer_decoder(multi_scale, mask_features, return_aux=True)
        net_logits, net_masks = model.network(x, torch.zeros(SMALL["classes"], 8))
        ref = hf.model(x, output_hidden_states=True)
        ref_classes = [hf.class_predictor(s.transpose(0, 1))
                       for s in ref.transformer_decoder_intermediate_states]
    ours = {"features": [feats[f] for f in ("res2", "res3", "res4", "res5")],
            "multi_scale": multi_scale, "mask_features": mask_features,
            "masks": [a["pred_masks"] for a in dec["aux_outputs"]] + [dec["pred_masks"]],
            "classes": [a["class_embeds"] for a in dec["aux_outputs"]] + [dec["class_embeds"]],
            "network": (net_logits, net_masks)}
    theirs = {"features": list(ref.encoder_hidden_states),
              "multi_scale": list(ref.pixel_decoder_hidden_states),
              "mask_features": ref.pixel_decoder_last_hidden_state,
              "masks": list(ref.masks_queries_logits), "classes": ref_classes}
    return ours, theirs


def test_conversion_fills_every_key_and_reports_unused(pair):
    _, model, report = pair
    assert report.layout == "hf_mask2former" and not report.missing and not report.dropped
    assert "criterion.empty_weight" in report.unused
    assert all(k == "criterion.empty_weight" or k.endswith("num_batches_tracked")
               for k in report.unused)
    # split q/k/v of the decoder's self-attention were fused: 3 sources -> 1 target
    fused = [s for s, t in report.converted.items()
             if t == "transformer_decoder.self_layers.0.attn.in_proj_weight"]
    assert len(fused) == 3


def test_backbone_features_agree(outputs):
    ours, theirs = outputs
    for a, b in pairs(ours["features"], theirs["features"]):
        assert a.abs().max() > 0.1  # not a vacuous comparison
        assert _max_diff(a, b) < TOL


def test_pixel_decoder_outputs_agree(outputs):
    ours, theirs = outputs
    assert len(ours["multi_scale"]) == len(theirs["multi_scale"]) == 3
    for a, b in pairs(ours["multi_scale"], theirs["multi_scale"]):
        assert a.abs().max() > 0.1 and _max_diff(a, b) < TOL
    assert ours["mask_features"].abs().max() > 0.1
    assert _max_diff(ours["mask_features"], theirs["mask_features"]) < TOL


def test_every_decoder_layer_agrees(outputs):
    ours, theirs = outputs
    # the query prediction + one per attention layer (HF's decoder_layers = DaTaSeg's + 1)
    assert len(ours["masks"]) == len(theirs["masks"]) == SMALL["dec_layers"] + 1
    for a, b in pairs(ours["masks"], theirs["masks"]):
        assert a.abs().max() > 0.1 and _max_diff(a, b) < TOL
    for a, b in pairs(ours["classes"], theirs["classes"]):
        assert a.shape[-1] == SMALL["classes"] + 1
        assert a.abs().max() > 0.1 and _max_diff(a, b) < TOL


def test_inference_network_agrees_with_last_layer(outputs):
    """``DaTaSeg.network`` (the inference and export path: attention masks from resized mask
    features instead of resized mask logits) gives the last layer's logits too."""
    ours, theirs = outputs
    logits, masks = ours["network"]
    assert _max_diff(logits, theirs["classes"][-1]) < TOL
    assert _max_diff(masks, theirs["masks"][-1]) < TOL


def test_pre_norm_decoder_agrees():
    """Mask2Former's PRE_NORM variant (HF pre_norm=True) against DaTaSeg's PRE_NORM."""
    hf = hf_model(seed=4, pre_norm=True)
    model = build_model(dataseg_cfg(linear=True, pre_norm=True)).eval()
    model.load_state_dict(convert_state_dict(hf.state_dict(), "hf-pre-norm", model)[0])
    x = torch.randn(2, 3, 72, 88, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.backbone(x)
        dec = model.transformer_decoder(*reversed(model.pixel_decoder(feats)), return_aux=True)
        ref = hf.model(x)
    ours = [a["pred_masks"] for a in dec["aux_outputs"]] + [dec["pred_masks"]]
    for a, b in pairs(ours, ref.masks_queries_logits):
        assert a.abs().max() > 0.1 and _max_diff(a, b) < TOL


def test_a_wrong_conversion_is_caught(pair):
    """Sensitivity: swapping the decoder's q and k projections (a plausible conversion bug)
    moves the outputs far beyond the tolerance."""
    hf, _, _ = pair
    state = dict(hf.state_dict())
    for i in range(SMALL["dec_layers"]):
        p = f"model.transformer_module.decoder.layers.{i}.self_attn."
        for n in ("weight", "bias"):
            state[p + "q_proj." + n], state[p + "k_proj." + n] = (state[p + "k_proj." + n],
                                                                  state[p + "q_proj." + n])
    model = build_model(dataseg_cfg(linear=True)).eval()
    model.load_state_dict(convert_state_dict(state, "swapped", model)[0])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        masks = model.network(x, torch.zeros(SMALL["classes"], 8))[1]
        ref = hf.model(x).masks_queries_logits[-1]
    assert _max_diff(masks, ref) > 100 * TOL


# ------------------------------------------------------------------ post-processing vs HF
OUT = (384, 384)  # HF resizes mask logits to 384 x 384 first (rule R1): ask for that size


def _hf_outputs(class_logits, mask_logits, padded, image_sizes):
    """HF's post-processing input with the mask logits already resized the way Mask2Former
    and DaTaSeg resize them (padded size, crop, output size); HF's own 384 x 384 and
    target-size resizes are then identities (rule R1)."""
    from types import SimpleNamespace
    masks = torch.stack([resize_mask_logits(m, padded, s, OUT)
                         for m, s in zip(mask_logits, image_sizes)])
    return SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=masks)


@pytest.fixture(scope="module")
def hf_logits(pair):
    """HF's network outputs on a padded batch of a 72 x 88 and a 64 x 50 image (zeros padded
    to 96 x 96, as Mask2Former and DaTaSeg pad to a multiple of 32)."""
    hf, _, _ = pair
    g = torch.Generator().manual_seed(3)
    image_sizes = [(72, 88), (64, 50)]
    x = torch.zeros(2, 3, 96, 96)
    for i, (h, w) in enumerate(image_sizes):
        x[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
    with torch.no_grad():
        out = hf(x)
    # a random init is unsure of every class (all scores < 0.5): give query q a +5 logit on
    # class q mod (K + 1) (the last is "no object") so that panoptic keeps several queries of
    # several classes
    logits = out.class_queries_logits.clone()
    q = torch.arange(logits.shape[1])
    logits[:, q, q % logits.shape[2]] += 5.0
    # and its mask logits are small (|x| < ~1): scale them so that probabilities spread out
    masks = out.masks_queries_logits * 10
    return logits, masks, (96, 96), image_sizes


def _ours(hf_logits, task, is_thing, **kw):
    logits, masks, padded, sizes = hf_logits
    return postprocess_logits(logits, masks, padded, sizes, [OUT] * len(sizes), task, is_thing,
                              merge=False, **kw)


def test_semantic_equals_hf(hf_logits):
    logits, masks, padded, sizes = hf_logits
    ours = _ours(hf_logits, "semantic", torch.zeros(SMALL["classes"], dtype=torch.bool))
    theirs = hf_image_processor().post_process_semantic_segmentation(
        _hf_outputs(logits, masks, padded, sizes), target_sizes=[OUT] * 2)
    for o, t in pairs(ours, theirs):
        assert torch.equal(o["sem_seg"].argmax(0), t)


def test_instance_equals_hf(hf_logits):
    logits, masks, padded, sizes = hf_logits
    q = SMALL["queries"]
    ours = _ours(hf_logits, "instance", torch.ones(SMALL["classes"], dtype=torch.bool),
                 instances_per_image=q)  # Mask2Former's TEST.TOPK_PER_IMAGE = HF's num_queries
    theirs = hf_image_processor().post_process_instance_segmentation(
        _hf_outputs(logits, masks, padded, sizes), threshold=0.0, target_sizes=[OUT] * 2,
        return_binary_maps=True)
    for o, t in pairs(ours, theirs):
        inst = o["instances"]
        # rule I1: HF drops empty masks (and scores under its threshold, 0 here)
        keep = inst.pred_masks.flatten(1).any(1)
        mine = sorted((round(float(s), 6), int(c), m.to(torch.uint8).flatten().tolist())
                      for s, c, m in zip(inst.scores[keep], inst.pred_classes[keep],
                                         inst.pred_masks[keep]))
        maps = t["segmentation"] if t["segments_info"] else []
        hers = sorted((s["score"], s["label_id"], maps[i].to(torch.uint8).flatten().tolist())
                      for i, s in enumerate(t["segments_info"]))
        assert len(mine) == len(hers) > 0
        for a, b in pairs(mine, hers):
            assert abs(a[0] - b[0]) <= 2e-6 and a[1:] == b[1:]


def test_panoptic_equals_hf_up_to_documented_rules(hf_logits):
    """DaTaSeg follows Mask2Former's rule query by query. Every pixel's category agrees with
    HF's where both give one. Where only one of them labels a
    pixel, the pixel's owner query (argmax of score x probability, the same in both) is kept
    by one rule and dropped by the other (rule P1: HF measures a query's own area on
    score-weighted probabilities, Mask2Former on probabilities), or it is a won pixel with
    probability < 0.5, which Mask2Former leaves void and HF does not (rule P2)."""
    logits, masks, padded, sizes = hf_logits
    k = SMALL["classes"]
    is_thing = torch.tensor([True, True, False, False, True])
    stuff = {i for i in range(k) if not is_thing[i]}
    ours = _ours(hf_logits, "panoptic", is_thing)
    hf_in = _hf_outputs(logits, masks, padded, sizes)
    # rule P4: HF's stuff fusion can reuse ids (fused id, then numbering resumes from it), so
    # HF runs without fusion here; categories per pixel do not depend on fusion
    theirs = hf_image_processor().post_process_panoptic_segmentation(
        hf_in, threshold=0.8, mask_threshold=0.5, overlap_mask_area_threshold=0.8,
        label_ids_to_fuse=set(), target_sizes=[OUT] * 2)
    explained = {"P1": 0, "P2": 0}
    labelled = 0
    for i, (o, t) in enumerate(pairs(ours, theirs)):
        seg, info = o["panoptic_seg"]
        ours_cat = torch.full(OUT, -1)
        for s in info:
            ours_cat[seg == s["id"]] = s["category_id"]
            assert (s["category_id"] in stuff) != s["isthing"]
        hf_cat = torch.full(OUT, -1)
        for s in t["segments_info"]:
            hf_cat[t["segmentation"] == s["id"]] = s["label_id"]
        both = (ours_cat >= 0) & (hf_cat >= 0)
        labelled += int(both.sum())
        assert torch.equal(ours_cat[both], hf_cat[both])
        scores, labels = logits[i].softmax(-1).max(-1)
        keep = (labels != k) & (scores > 0.8)
        scores, labels = scores[keep], labels[keep]
        probs = hf_in.masks_queries_logits[i][keep].sigmoid()
        owner = (scores[:, None, None] * probs).argmax(0)
        # DaTaSeg = Mask2Former's rule, query by query (written from Mask2Former's
        # panoptic_inference): a kept query labels exactly its won, confident pixels
        for q in range(len(scores)):
            won, confident = owner == q, probs[q] >= 0.5
            mine = won & confident
            kept = (bool(mine.any()) and int(confident.sum()) > 0
                    and int(won.sum()) / int(confident.sum()) >= 0.8)
            expected = torch.where(mine, labels[q], -1) if kept else torch.full(OUT, -1)
            assert torch.equal(torch.where(won, ours_cat, -1), expected), q
        differ = (ours_cat >= 0) != (hf_cat >= 0)
        if not differ.any():
            continue
        for q in owner[differ].unique().tolist():
            won, confident = owner == q, probs[q] >= 0.5
            m2f_keeps = (bool((won & confident).any()) and int(confident.sum()) > 0
                         and int(won.sum()) / int(confident.sum()) >= 0.8)
            weighted = int((scores[q] * probs[q] >= 0.5).sum())
            hf_keeps = weighted > 0 and int(won.sum()) / weighted > 0.8
            pixels = differ & won
            if m2f_keeps != hf_keeps:  # P1
                assert torch.equal(ours_cat[pixels] >= 0, torch.full_like(ours_cat[pixels],
                                                                          m2f_keeps))
                explained["P1"] += int(pixels.sum())
            else:  # P2: both keep q; HF adds its won pixels that are not confident
                assert hf_keeps and bool((hf_cat[pixels] >= 0).all())
                assert not bool(confident[pixels].any())
                explained["P2"] += int(pixels.sum())
    assert labelled > 1000  # segments were compared, not only void
    print("pixels labelled by one side only, by rule:", explained, "agreeing:", labelled)


def hf_image_processor():
    from transformers import Mask2FormerImageProcessor
    return Mask2FormerImageProcessor()
