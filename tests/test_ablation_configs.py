"""configs/ablations/: every config loads on top of the R50 config, changes only what its name
says, and the dataset-specific ones build an R50 model with one module copy per dataset and a
module for every test set."""
from pathlib import Path

import pytest
from detectron2.modeling import build_model

import dataseg  # noqa: F401  (registers the model)
from dataseg.engine import build_cfg
from dataseg.modeling.dataset_specific import DatasetIndex

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "dataseg_r50.yaml"
ABLATIONS = sorted((REPO / "configs" / "ablations").glob("*.yaml"))


def flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if hasattr(v, "items"):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_every_ablation_has_a_gpu_hour_estimate():
    readme = (REPO / "configs" / "ablations" / "README.md").read_text()
    assert len(ABLATIONS) >= 8
    for path in ABLATIONS:
        assert f"`{path.name}`" in readme, path.name


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_changes_only_its_keys(path):
    base, cfg = flat(build_cfg(str(BASE))), flat(build_cfg(str(path)))
    changed = {k for k in cfg if cfg[k] != base[k]} - {"OUTPUT_DIR"}
    name = path.stem
    if name.startswith("queries_"):
        assert changed == {"MODEL.DATASEG.NUM_OBJECT_QUERIES"}
        assert cfg["MODEL.DATASEG.NUM_OBJECT_QUERIES"] == int(name.split("_")[1])
    elif name.startswith("focal_weight_"):
        assert changed == {"MODEL.DATASEG.FOCAL_WEIGHT"}
    elif name.startswith("match_empty_merged_"):
        assert changed == {"MODEL.DATASEG.MATCH_EMPTY_MERGED"}
    else:
        assert name.startswith("ds_"), name
        assert changed and all(k.startswith("MODEL.DATASEG.DATASET_SPECIFIC.") for k in changed)


@pytest.mark.parametrize("path", [p for p in ABLATIONS if p.stem.startswith("ds_")],
                         ids=lambda p: p.name)
def test_dataset_specific_r50_builds_with_a_module_for_every_test_set(path):
    cfg = build_cfg(str(path), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
                                "MODEL.DATASEG.CLASSIFIER.TEXT_DIM", "768"])
    index = DatasetIndex.from_cfg(cfg)
    assert len(index) == 3
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        index(name)  # raises KeyError for a test set without modules
    model = build_model(cfg)
    names = [n for n, _ in model.named_parameters()]
    d = cfg.MODEL.DATASEG.DATASET_SPECIFIC
    if d.QUERIES:
        assert {f"transformer_decoder.query_feat.{i}.weight" for i in range(3)} <= set(names)
    if d.HEADS:
        assert "transformer_decoder.mask_embed.2.layers.0.weight" in names
    if d.PROMPT_TOKENS:
        assert {f"classifier.prompts.{i}" for i in range(3)} <= set(names)
