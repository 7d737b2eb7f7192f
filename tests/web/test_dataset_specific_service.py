"""The web demo on a model with dataset-specific (Table 5) modules: a typed vocabulary needs
``--modules-from`` (one clear error at start-up otherwise) and is then served."""
import cv2
import pytest
from engine_helpers import QUICKSTART, tiny_opts

from dataseg.data.synthetic import ensure_generated, register_synthetic_world
from dataseg.engine.defaults import build_cfg
from dataseg.vocabulary import parse_vocabulary
from dataseg.web.service import SegmentationService

pytestmark = pytest.mark.slow

DS_OPTS = {"MODEL.DATASEG.DATASET_SPECIFIC.QUERIES": True,
           "MODEL.DATASEG.DATASET_SPECIFIC.PROMPT_TOKENS": 2,
           "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL": "pytorch",
           "MODEL.DEVICE": "cpu"}


def test_typed_vocabulary_on_dataset_specific_model(tmp_path):
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp_path, tmp_path / "out", **DS_OPTS))
    register_synthetic_world(cfg)
    try:
        ensure_generated(cfg)
        with pytest.raises(ValueError) as e:
            SegmentationService(cfg)
        assert "modules_from" in str(e.value) and "synth_pan_train" in str(e.value)
        service = SegmentationService(cfg, modules_from="synth_pan_train")
        image = next((tmp_path / "world").rglob("*.jpg"))
        ok, data = cv2.imencode(".png", cv2.imread(str(image)))
        answer = service.segment(data.tobytes(), "a.png",
                                 parse_vocabulary("circle; grass:stuff"),
                                 "semantic")
        assert answer["task"] == "semantic", sorted(answer)
    finally:
        register_synthetic_world(None)
