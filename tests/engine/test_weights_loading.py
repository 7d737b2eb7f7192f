"""Issue 25: MODEL.WEIGHTS loads only what fits and says what it loaded.

A full DaTaSeg checkpoint must match the model (else one line naming the keys that differ and
how many); a backbone-only file (with or without the ``backbone.`` prefix, or a Detectron2
``.pkl`` matched by name heuristics) loads the backbone and says so; a file that matches
neither is one line; MODEL.DATASEG.WEIGHTS_PARTIAL loads what fits on purpose and lists the
rest; an empty MODEL.WEIGHTS says what the model holds instead of Detectron2's "No checkpoint
found". Real models built from tiny configs (a ResNet-18 and a ViTDet), in this process; the
command lines are in test_weights_cli.py.
"""
import pickle

import pytest
import torch
from detectron2.modeling import build_model
from engine_helpers import QUICKSTART, REPO, collect_logs, tiny_opts

from dataseg.engine import AtomicCheckpointer, CheckpointMismatchError, build_cfg
from dataseg.engine.checkpoint import read_weights

VITDET_TINY = str(REPO / "configs" / "quickstart_vitdet_tiny.yaml")


def tiny_model(tmp, config=QUICKSTART, seed=0, **overrides):
    cfg = build_cfg(config, tiny_opts(tmp, tmp / "out", **overrides))
    torch.manual_seed(seed)
    return cfg, build_model(cfg).eval()


def vitdet_model(tmp, seed=0):
    return tiny_model(tmp, VITDET_TINY, seed, **{"MODEL.BACKBONE.NAME": "build_vitdet_backbone"})


def loading(checkpointer, path):
    """``checkpointer.load(path)`` and the lines it logged."""
    with collect_logs("dataseg.engine.checkpoint") as lines:
        checkpointer.load(str(path))
    return lines


@pytest.fixture
def resnet_ckpt(tmp_path):
    """A full checkpoint of a tiny ResNet-18 DaTaSeg model, as training saves it."""
    cfg, model = tiny_model(tmp_path, seed=1)
    AtomicCheckpointer(model, save_dir=str(tmp_path)).save("resnet_model")
    return tmp_path / "resnet_model.pth", model


def test_full_checkpoint_of_this_model_loads_every_tensor(tmp_path, resnet_ckpt):
    path, source = resnet_ckpt
    cfg, model = tiny_model(tmp_path, seed=2)
    lines = loading(AtomicCheckpointer.from_cfg(model, cfg), path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    n = len(model.state_dict())
    assert lines == [f"loaded full checkpoint {path}: {n} tensors"]


def test_checkpoint_of_another_architecture_is_one_line(tmp_path, resnet_ckpt):
    path, _ = resnet_ckpt
    cfg, model = vitdet_model(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer.from_cfg(model, cfg).load(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"checkpoint {path} does not match the model")
    saved = torch.load(path, weights_only=True)["model"]
    missing = [k for k in before if k not in saved]
    unexpected = [k for k in saved if k not in before]
    assert missing[0].startswith("backbone.vit.") and unexpected[0].startswith("backbone.stem.")
    # how many differ, and the first ones by name
    assert f"{len(missing)} model keys missing from it ({missing[0]}, {missing[1]}" in msg, msg
    assert f"{len(unexpected)} keys the model lacks ({unexpected[0]}, {unexpected[1]}" in msg
    assert "MODEL.DATASEG.WEIGHTS_PARTIAL" in msg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched


def test_same_keys_other_shapes_is_one_line_naming_them(tmp_path, resnet_ckpt):
    path, _ = resnet_ckpt
    cfg, model = tiny_model(tmp_path, **{"MODEL.DATASEG.NUM_OBJECT_QUERIES": 12})
    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer.from_cfg(model, cfg).load(str(path))
    msg = str(e.value)
    assert "\n" not in msg and "shape mismatches" in msg
    assert "transformer_decoder.query_feat.weight: checkpoint (8, 32) vs model (12, 32)" in msg


def test_partial_switch_loads_what_fits_and_lists_the_rest(tmp_path, resnet_ckpt):
    path, source = resnet_ckpt
    cfg, model = tiny_model(tmp_path, **{"MODEL.DATASEG.NUM_OBJECT_QUERIES": 12,
                                         "MODEL.DATASEG.WEIGHTS_PARTIAL": True})
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = AtomicCheckpointer.from_cfg(model, cfg)
    lines = loading(checkpointer, path)
    report = checkpointer.load_report
    assert report.kind == "partial"
    changed = {k for k, v in source.state_dict().items()
               if tuple(v.shape) != tuple(fresh[k].shape)}
    assert changed == {"transformer_decoder.query_feat.weight",
                       "transformer_decoder.query_embed.weight"}
    assert sorted(report.missing) == sorted(changed) == sorted(checkpointer.missing_model_keys)
    for key, value in model.state_dict().items():
        expected = fresh[key] if key in changed else source.state_dict()[key]
        assert torch.equal(value, expected), key
    (line,) = lines
    total = len(fresh)
    assert line.startswith(f"loaded {total - 2} of the model's {total} tensors from {path} "
                           "(MODEL.DATASEG.WEIGHTS_PARTIAL); left at initialisation: "
                           "transformer_decoder.query_feat.* (1), "
                           "transformer_decoder.query_embed.* (1)"), line


def _backbone_state(model, prefix=True):
    return {(k if prefix else k[len("backbone."):]): v.clone()
            for k, v in model.state_dict().items() if k.startswith("backbone.")}


@pytest.mark.parametrize("kind", ["prefixed", "bare", "d2_pkl"])
def test_backbone_only_file_loads_the_backbone_and_says_so(tmp_path, kind):
    _, source = tiny_model(tmp_path, seed=1)
    if kind == "prefixed":  # e.g. a DaTaSeg backbone saved alone
        path = tmp_path / "backbone.pth"
        torch.save({"model": _backbone_state(source)}, path)
    elif kind == "bare":  # a backbone module's own state dict, plus an ImageNet classifier
        path = tmp_path / "backbone_bare.pth"
        state = _backbone_state(source, prefix=False)
        state["fc.weight"] = torch.zeros(10, 512)
        torch.save(state, path)
    else:  # a Detectron2 model-zoo ImageNet pickle: numpy arrays, names matched by heuristics
        path = tmp_path / "R-18.pkl"
        state = {k: v.numpy() for k, v in _backbone_state(source, prefix=False).items()}
        with open(path, "wb") as f:
            pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, f)
    cfg, model = tiny_model(tmp_path, seed=2)
    heads_before = {k: v.clone() for k, v in model.state_dict().items()
                    if not k.startswith("backbone.")}
    checkpointer = AtomicCheckpointer.from_cfg(model, cfg)
    lines = loading(checkpointer, path)
    backbone = _backbone_state(source)
    for key, value in model.state_dict().items():
        expected = backbone[key] if key in backbone else heads_before[key]
        assert torch.equal(value, torch.as_tensor(expected)), key
    rest = len(heads_before)
    expected_line = (f"loaded backbone weights from {path}: {len(backbone)} tensors; "
                     f"the rest initialised ({rest} tensors)")
    (line,) = [m for m in lines if m.startswith("loaded")]
    if kind == "bare":
        expected_line += "; not used from the file: 1 (fc.weight)"
    assert line == expected_line
    assert checkpointer.load_report.kind == "backbone"
    assert len(checkpointer.missing_model_keys) == rest


def test_file_matching_neither_is_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.layer.0.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, path)
    cfg, model = tiny_model(tmp_path)
    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer.from_cfg(model, cfg).load(str(path))
    msg = str(e.value)
    assert "\n" not in msg and "matches neither the model built from the config nor its " \
        "backbone: none of its 2 tensor names" in msg and "encoder.layer.0.weight" in msg
    # the same with the switch: nothing fits, nothing is loaded silently
    cfg, model = tiny_model(tmp_path, **{"MODEL.DATASEG.WEIGHTS_PARTIAL": True})
    with pytest.raises(CheckpointMismatchError, match="matches neither"):
        AtomicCheckpointer.from_cfg(model, cfg).load(str(path))


def test_empty_weights_say_what_the_model_holds(tmp_path):
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp_path, tmp_path / "out", **{
        "MODEL.BACKBONE.NAME": "build_efficientnet_lite0_backbone"}))
    model = build_model(cfg)
    with collect_logs("dataseg", "detectron2", "fvcore") as lines:
        AtomicCheckpointer.from_cfg(model, cfg).resume_or_load("", resume=False)
    text = "\n".join(lines)
    assert "Initializing model from scratch" not in text and "No checkpoint found" not in text
    assert ("No checkpoint loaded (MODEL.WEIGHTS is empty): the backbone holds the packaged "
            "ImageNet EfficientNet-Lite0 weights (MODEL.EFFICIENTNET.PRETRAINED); the rest "
            "initialised") in text


def test_one_reader_for_every_format(tmp_path):
    """read_weights reads .pth ({"model"}, {"state_dict"}, bare), .pkl and .safetensors."""
    from safetensors.torch import save_file

    state = {"a.weight": torch.arange(6.0).view(2, 3)}
    torch.save({"model": state, "iteration": 3}, tmp_path / "m.pth")
    torch.save({"state_dict": state}, tmp_path / "sd.pth")
    torch.save(state, tmp_path / "bare.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    with open(tmp_path / "z.pkl", "wb") as f:
        pickle.dump({"model": {"a.weight": state["a.weight"].numpy()}, "__author__": "x"}, f)
    for name in ("m.pth", "sd.pth", "bare.pth", "w.safetensors", "z.pkl"):
        checkpoint, got = read_weights(str(tmp_path / name))
        assert list(got) == ["a.weight"] and torch.equal(torch.as_tensor(got["a.weight"]),
                                                         state["a.weight"]), name
    assert read_weights(str(tmp_path / "m.pth"))[0]["iteration"] == 3
