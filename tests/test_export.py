"""Export of a model with dataset-specific (Table 5) modules: one dataset's copies are baked in,
chosen by ``--dataset`` / ``dataset=``; without it a one-line error names the option and lists
the model's datasets. (The plain model's export is tested in tests/test_inference.py.)"""
import importlib.util

import cv2
import numpy as np
import pytest
import torch
from engine_helpers import QUICKSTART, REPO, tiny_opts

import dataseg  # noqa: F401
from dataseg.data.synthetic import ensure_generated, register_synthetic_world
from dataseg.engine import build_cfg
from dataseg.export import ExportedPredictor, compare_with_eager, export_model
from dataseg.predictor import DaTaSegPredictor

pytestmark = pytest.mark.slow

DS_OPTS = {"MODEL.DATASEG.DATASET_SPECIFIC.QUERIES": True,
           "MODEL.DATASEG.DATASET_SPECIFIC.HEADS": True,
           "MODEL.DATASEG.DATASET_SPECIFIC.PROMPT_TOKENS": 2,
           "MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP": "['synth_pan_val:synth_pan_train']",
           "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL": "pytorch",
           "MODEL.DEVICE": "cpu"}
DATASETS = ["synth_sem_train", "synth_pan_train", "synth_box_train", "synth_pan_val"]


def _load_tool():
    spec = importlib.util.spec_from_file_location("dataseg_export_tool",
                                                  REPO / "tools" / "export_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ds_predictor(tmp_path_factory):
    """An untrained tiny model with dataset-specific queries, heads and prompt tokens (the
    prompts randomised: they start at zero), predicting synth_pan_val's vocabulary."""
    tmp = tmp_path_factory.mktemp("export_ds")
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "out", **DS_OPTS))
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    torch.manual_seed(0)
    p = DaTaSegPredictor(cfg, dataset="synth_pan_val")
    with torch.no_grad():
        for prompt in p.model.classifier.prompts:
            prompt.normal_()
    return tmp, cfg, p


def _images(n=2):
    from detectron2.data import DatasetCatalog

    return [cv2.imread(d["file_name"]) for d in DatasetCatalog.get("synth_pan_val")[:n]]


def test_dataset_specific_export_bakes_in_the_named_datasets_modules(ds_predictor, tmp_path):
    _, _, p = ds_predictor
    result = export_model(p, tmp_path / "exp", (64, 64), dataset="synth_pan_val")
    exported = ExportedPredictor(tmp_path / "exp", dataset="synth_pan_val")
    images = _images()
    stats = compare_with_eager(p, exported, images)
    assert stats["max_abs_logit_diff"] <= 1e-3 and stats["max_abs_mask_diff"] <= 1e-3, stats
    assert stats["argmax_agreement"] >= 0.999, stats
    a, b = p(images[0]), exported(images[0])
    assert (a["sem_seg"].argmax(0) == b["sem_seg"].argmax(0)).float().mean() >= 0.999
    # the graph holds synth_pan_train's copies (TEST_MAP), not another dataset's
    emb = p.model.vocabulary.get("synth_pan_val")[0]
    x, _ = exported.preprocess(images[0])
    onnx_logits, _ = exported.run_network(x.tensor)
    with torch.no_grad():
        own = p.model.network(x.tensor, emb, dataset="synth_pan_train")[0]
        other = p.model.network(x.tensor, emb, dataset="synth_sem_train")[0]
    assert (onnx_logits - own).abs().max() <= 1e-3
    assert (onnx_logits - other).abs().max() > 1e-2
    assert result["torchscript"] is not None, result["torchscript_error"]
    ts = torch.jit.load(str(result["torchscript"]))
    z = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = p.model.network(z, emb, dataset="synth_pan_val")
        got = ts(z)
    assert torch.allclose(ref[0], got[0], atol=1e-4) and torch.allclose(ref[1], got[1],
                                                                          atol=1e-4)


def test_dataset_specific_export_without_or_with_unknown_dataset_is_one_clear_error(
        ds_predictor, tmp_path):
    _, _, p = ds_predictor
    for dataset, what in ((None, "--dataset NAME"), ("synth_sem_val", "synth_sem_val")):
        with pytest.raises(ValueError) as e:
            export_model(p, tmp_path / "exp", (64, 64), dataset=dataset)
        msg = str(e.value)
        assert "\n" not in msg and what in msg and "--dataset" in msg
        assert all(d in msg for d in DATASETS), msg
    assert not (tmp_path / "exp" / "model.onnx").exists()
    # the predictor of an export checks the dataset the same way
    export_model(p, tmp_path / "ok", (64, 64), dataset="synth_pan_train")
    for dataset, what in ((None, "no dataset given"), ("synth_sem_train", "synth_sem_train")):
        with pytest.raises(ValueError, match=what) as e:
            ExportedPredictor(tmp_path / "ok", dataset=dataset)
        assert "dataset='synth_pan_train'" in str(e.value)
    # synth_pan_val is served by synth_pan_train's copies (TEST_MAP): the same graph
    for dataset in ("synth_pan_train", "synth_pan_val"):
        assert ExportedPredictor(tmp_path / "ok", dataset=dataset).dataset == "synth_pan_train"


@pytest.mark.parametrize("args,what", [
    ([], "--dataset NAME"),
    (["--dataset", "synth_sem_val"], "synth_sem_val"),
    (["--vocab", "cat; grass:stuff"], "--dataset NAME"),
])
def test_export_tool_on_dataset_specific_model_without_dataset(ds_predictor, tmp_path, capsys,
                                                               args, what):
    _, cfg, _ = ds_predictor
    config = tmp_path / "ds.yaml"
    config.write_text(cfg.dump())
    rc = _load_tool().main(["--config-file", str(config), "--output", str(tmp_path / "o")]
                           + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and what in err[0] and "--dataset" in err[0], err
    assert all(d in err[0] for d in DATASETS), err
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_export_tool_on_dataset_specific_model_with_dataset(ds_predictor, tmp_path, capsys):
    tmp, cfg, _ = ds_predictor
    config = tmp_path / "ds.yaml"
    config.write_text(cfg.dump())
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.asarray(_images(1)[0]))
    rc = _load_tool().main(["--config-file", str(config), "--output", str(tmp_path / "o"),
                            "--dataset", "synth_pan_val", "--size", "64", "64",
                            "--no-torchscript", "--check-images", str(image)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "modules of synth_pan_val" in out and "onnxruntime vs eager" in out
    assert (tmp_path / "o" / "model.onnx").is_file()


def test_run_time_vocabulary_on_dataset_specific_model_needs_modules_from(ds_predictor):
    """A typed vocabulary is known to no dataset-specific copy: without modules_from it is one
    clear error naming the option; with it, the outputs are those of that dataset's copies."""
    _, cfg, p = ds_predictor
    image = _images(1)[0]
    with pytest.raises(ValueError) as e:
        DaTaSegPredictor(cfg, vocabulary="circle; square; grass:stuff", model=p.model)
    assert "\n" not in str(e.value) and "modules_from" in str(e.value)
    assert all(d in str(e.value) for d in DATASETS)
    with pytest.raises(ValueError, match="synth_sem_val"):
        DaTaSegPredictor(cfg, vocabulary="circle; square", model=p.model,
                         modules_from="synth_sem_val")
    outs = {}
    for owner in ("synth_pan_train", "synth_sem_train"):
        q = DaTaSegPredictor(cfg, vocabulary="circle; square; grass:stuff", model=p.model,
                             modules_from=owner, task="semantic")
        outs[owner] = q(image)["sem_seg"]
        x = q.preprocess(image)
        emb = q.model.vocabulary.get(q.vocabulary_name)[0]
        with torch.no_grad():
            a = q.model.network(q.model.preprocess([x]).tensor, emb,
                                dataset=q.vocabulary_name)[0]
            b = q.model.network(q.model.preprocess([x]).tensor, emb, dataset=owner)[0]
        assert torch.equal(a, b)  # the typed vocabulary runs on exactly the owner's copies
    assert (outs["synth_pan_train"] - outs["synth_sem_train"]).abs().max() > 1e-3
    # the demo's option reaches the predictor
    spec = importlib.util.spec_from_file_location("dataseg_demo", REPO / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    args = demo.get_parser().parse_args(["--input", "x.png", "--vocab", "circle",
                                         "--modules-from", "synth_pan_train"])
    assert args.modules_from == "synth_pan_train"
