"""Mask-less annotations of an instance json are ignore regions: the json evaluates, with the
AP of the same json with those annotations marked crowd (box as the region), and a prediction
on them is neither a false positive nor is the object a false negative."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

from dataseg.data.register import register_instance_dataset, unregister_dataset
from dataseg.engine.evaluation import build_evaluator

H = W = 40
A = [2.0, 2.0, 16.0, 16.0]  # x, y, w, h: a labelled object
B = [20.0, 20.0, 18.0, 18.0]  # the object raters skipped (no mask)


def _poly(b):
    x, y, w, h = b
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _json(variant):
    b = {"id": 2, "image_id": 1, "category_id": 1, "bbox": B, "area": B[2] * B[3]}
    if variant == "maskless":
        pass  # no "segmentation" key
    elif variant == "empty":
        b.update(segmentation=[], ignore=1)
    elif variant == "crowd":
        b.update(segmentation=_poly(B), iscrowd=1)
    elif variant == "object":
        b.update(segmentation=_poly(B), iscrowd=0)
    return {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": A,
                             "area": A[2] * A[3], "segmentation": _poly(A), "iscrowd": 0}, b],
            "categories": [{"id": 1, "name": "thing"}]}


def _prediction():
    """One exact prediction on A, and a higher-scored one inside B (IoU with B < 0.5)."""
    boxes = torch.tensor([[2.0, 2.0, 18.0, 18.0], [22.0, 22.0, 30.0, 30.0]])
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[k, y0:y1, x0:x1] = True
    inst = Instances((H, W), pred_boxes=Boxes(boxes), scores=torch.tensor([0.8, 0.9]),
                     pred_classes=torch.tensor([0, 0]), pred_masks=masks)
    return [{"image_id": 1}], [{"instances": inst}]


@pytest.fixture
def evaluate(tmp_path):
    names = []

    def run(variant):
        path = tmp_path / f"{variant}.json"
        path.write_text(json.dumps(_json(variant)))
        name = f"test_ignore_{variant}"
        register_instance_dataset(name, str(tmp_path), str(path),
                                  [{"id": 1, "name": "thing"}], replace=True)
        names.append(name)
        evaluator = build_evaluator(name, str(tmp_path / variant), distributed=False)
        evaluator.reset()
        evaluator.process(*_prediction())
        res = evaluator.evaluate()
        return res["segm"]["AP"], res["bbox"]["AP"], DatasetCatalog.get(name)

    yield run
    for n in names:
        unregister_dataset(n)


def test_maskless_annotations_evaluate_as_crowd(evaluate):
    maskless_segm, maskless_bbox, records = evaluate("maskless")
    crowd_segm, crowd_bbox, _ = evaluate("crowd")
    object_segm, object_bbox, _ = evaluate("object")
    empty_segm, empty_bbox, _ = evaluate("empty")
    # B ignored: only A counts, and A is found -> AP 100 for masks and boxes
    assert maskless_segm == pytest.approx(crowd_segm) == pytest.approx(100.0)
    assert maskless_bbox == pytest.approx(crowd_bbox) == pytest.approx(100.0)
    assert (empty_segm, empty_bbox) == (maskless_segm, maskless_bbox)
    # as an ordinary object, B is missed and the prediction inside it is a false positive
    # ranked first: precision 0 at recall 0.5 until A is found (AP well below 100)
    assert object_segm < 60 and object_bbox < 60
    # the loader gives the same ignore region to training
    anns = records[0]["annotations"]
    assert [a["iscrowd"] for a in anns] == [0, 1]
    np.testing.assert_allclose(anns[1]["segmentation"], _poly(B))


def test_instance_loader_applies_the_box_loaders_bbox_checks(tmp_path):
    from dataseg.data.loading import DatasetFormatError, load_instance_dicts

    data = _json("object")
    data["annotations"][1]["bbox"] = [20.0, 20.0, -3.0, 18.0]
    path = tmp_path / "neg.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"neg.json: image 1, annotation 2: 'bbox' must"
                                                 r" be 4 finite numbers .* w, h >= 0"):
        load_instance_dicts("neg", str(tmp_path), str(path), [{"id": 1, "name": "thing"}])
