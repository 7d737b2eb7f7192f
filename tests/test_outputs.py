"""Drawings of ``dataseg.outputs.draw_predictions``: labels in proportion to the image, and
Detectron2's Visualizer ``scale`` honoured."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from engine_helpers import REPO
from PIL import Image

from dataseg.outputs import PredictionWriter, draw_predictions, draw_scale
from dataseg.predictor import parse_vocabulary, vocabulary_metadata

META = vocabulary_metadata(parse_vocabulary("grass:stuff; sky:stuff"), "t_outputs_draw")


def _semantic(size: int) -> dict:
    """One class (sky) over the whole image: one label, drawn at the centre."""
    scores = torch.zeros(2, size, size)
    scores[1] = 1.0
    return {"sem_seg": scores}


def _label_height(drawing: np.ndarray) -> int:
    """Rows holding the label's dark box (the only dark pixels on a white image)."""
    dark = (drawing < 60).all(axis=2)
    rows = np.flatnonzero(dark.any(axis=1))
    assert len(rows), "no label drawn"
    return int(rows[-1] - rows[0] + 1)


def test_labels_are_in_proportion_to_small_and_large_images():
    relative = {}
    for size in (128, 512):
        image = np.full((size, size, 3), 255, np.uint8)
        drawing = draw_predictions(image, _semantic(size), META)
        relative[size] = _label_height(drawing) / drawing.shape[0]
    # before: Detectron2's 10 pt minimum font gave 128 px images a label 4x taller relative
    # to the picture than 512 px images
    assert relative[128] <= 1.5 * relative[512], relative
    assert relative[128] < 0.06, relative


@pytest.mark.parametrize("size,scale,expected", [(128, None, 384), (128, 1, 128),
                                                 (128, 2.5, 320), (64, None, 384),
                                                 (512, None, 512), (900, None, 900)])
def test_scale_is_honoured_and_defaults_to_an_integer_upscale_of_small_images(size, scale,
                                                                              expected):
    image = np.full((size, size, 3), 255, np.uint8)
    drawing = draw_predictions(image, _semantic(size), META, scale=scale)
    assert drawing.shape == (expected, expected, 3)


def test_automatic_scale_keeps_long_images_bounded():
    assert draw_scale(128, 128) == 3 and draw_scale(600, 800) == 1
    assert draw_scale(100, 3000) == 1  # an upscale would pass the 2048 px bound
    assert draw_scale(100, 900) == 2
    with pytest.raises(ValueError, match="scale"):
        draw_predictions(np.zeros((8, 8, 3), np.uint8), _semantic(8), META, scale=0)


def test_prediction_writer_and_demo_take_the_scale(tmp_path, capsys):
    image = np.full((40, 60, 3), 255, np.uint8)
    preds = {"sem_seg": torch.zeros(2, 40, 60)}
    for scale, size in ((2, (120, 80)), (None, (600, 400)), (1, (60, 40))):
        out = tmp_path / f"s{scale}"
        PredictionWriter(out, META, scale=scale).write("a", image, preds)
        assert Image.open(out / "a.jpg").size == size  # 40 px short side: 10x reaches 384
        assert Image.open(out / "a_sem.png").size == (60, 40)  # label files: image size
    spec = importlib.util.spec_from_file_location("dataseg_demo", REPO / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--input", str(tmp_path), "--scale", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale" in err[0], err


def test_coco_image_entries_name_the_input_and_its_size_not_the_drawing(tmp_path):
    """Masks and boxes of instances_results.json refer to the input image: its COCO entry
    names the input file with the input's size, and the (upscaled) drawing separately."""
    image = np.full((40, 60, 3), 255, np.uint8)
    inst = Instances((40, 60))
    inst.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 20.0, 30.0]]))
    inst.scores = torch.tensor([0.9])
    inst.pred_classes = torch.tensor([0])
    masks = torch.zeros(1, 40, 60, dtype=torch.bool)
    masks[0, 5:30, 5:20] = True
    inst.pred_masks = masks
    meta = vocabulary_metadata(parse_vocabulary("cat; grass:stuff"), "t_outputs_coco")
    writer = PredictionWriter(tmp_path, meta)
    writer.write("a", image, {"instances": inst}, source="photos/a.png")
    writer.write("b", image, {"instances": inst})
    images = json.loads((tmp_path / "coco_images.json").read_text())["images"]
    assert images[0] == {"id": 1, "file_name": "photos/a.png", "height": 40, "width": 60,
                         "visualization": "a.jpg"}
    assert images[1]["file_name"] == "b.jpg" and images[1]["visualization"] == "b.jpg"
    assert Image.open(tmp_path / "a.jpg").size == (600, 400)  # the drawing is upscaled
