"""Table 5's dataset-specific (D-S) switches: each builds, trains one CPU step with the
project's optimizer, and its per-dataset copies only learn from their own dataset."""
import pytest
import torch
from detectron2.modeling import build_model
from test_model_e2e import IS_THING, D, K, _box_batch, _pan_batch, _sem_batch, tiny_cfg

from dataseg.engine.optimizer import build_optimizer
from dataseg.modeling.dataset_specific import DatasetIndex

NAMES = ("tiny_sem", "tiny_pan", "tiny_box")
BATCHES = {"tiny_sem": _sem_batch, "tiny_pan": _pan_batch, "tiny_box": _box_batch}
SWITCHES = {
    "queries": {"QUERIES": True},
    "heads": {"HEADS": True},
    "prompts": {"PROMPT_TOKENS": 3},
    "all": {"QUERIES": True, "HEADS": True, "PROMPT_TOKENS": 3},
}
# parameter-name prefixes of the per-dataset copies of each module: "<prefix><copy index>."
COPIES = {"QUERIES": ("transformer_decoder.query_feat.", "transformer_decoder.query_embed."),
          "HEADS": ("transformer_decoder.class_embed.", "transformer_decoder.mask_embed."),
          "PROMPT_TOKENS": ("classifier.prompts.",)}


def build(switches):
    cfg = tiny_cfg()
    for k, v in switches.items():
        cfg.MODEL.DATASEG.DATASET_SPECIFIC[k] = v
    cfg.MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP = ["tiny_val:tiny_pan"]
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    torch.manual_seed(0)
    model = build_model(cfg)
    emb = torch.randn(K, D)
    for name in NAMES + ("tiny_val",):
        model.set_vocabulary(name, emb, IS_THING)
    return cfg, model


def copy_params(model, switches):
    """{copy index: {name: parameter}} of every per-dataset module the switches add."""
    out = {i: {} for i in range(len(NAMES))}
    prefixes = [p for k in switches for p in COPIES[k]]
    for name, p in model.named_parameters():
        for prefix in prefixes:
            if name.startswith(prefix):
                out[int(name[len(prefix):].split(".")[0])][name] = p
    return out


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_switch_trains_one_step_and_copies_learn_only_from_their_dataset(switch):
    switches = SWITCHES[switch]
    cfg, model = build(switches)
    copies = copy_params(model, switches)
    per_copy = {len(v) for v in copies.values()}
    assert len(per_copy) == 1 and per_copy.pop() > 0, copies
    optimizer = build_optimizer(cfg, model)
    model.train()
    for d, name in enumerate(NAMES):
        before = {n: p.detach().clone() for c in copies.values() for n, p in c.items()}
        optimizer.zero_grad(set_to_none=True)
        losses = model(BATCHES[name]())
        sum(losses.values()).backward()
        for c, params in copies.items():
            grads = [p.grad for p in params.values()]
            if c == d:  # its own copy gets a gradient ...
                assert any(g is not None and g.abs().sum() > 0 for g in grads), (switch, name)
            else:  # ... and no other dataset's copy does
                assert all(g is None for g in grads), (switch, name, c)
        optimizer.step()
        for c, params in copies.items():
            changed = [not torch.equal(before[n], p.detach()) for n, p in params.items()]
            assert any(changed) if c == d else not any(changed), (switch, name, c)


def test_all_off_is_todays_shared_model():
    cfg, model = build({})
    names = [n for n, _ in model.named_parameters()]
    assert "transformer_decoder.query_feat.weight" in names
    assert "transformer_decoder.class_embed.0.weight" in names
    assert not any(n.startswith("classifier.prompts") for n in names)


def test_prompts_start_as_identity_and_switch_with_the_dataset():
    _, model = build(SWITCHES["prompts"])
    t = torch.nn.functional.normalize(torch.randn(K, D), dim=1)
    torch.testing.assert_close(model.classifier.prompted(t, "tiny_sem"), t)
    with torch.no_grad():
        model.classifier.prompts[1].normal_()
    torch.testing.assert_close(model.classifier.prompted(t, "tiny_sem"), t)
    moved = model.classifier.prompted(t, "tiny_pan")
    assert not torch.allclose(moved, t)
    # a val set mapped to tiny_pan uses tiny_pan's prompts
    torch.testing.assert_close(model.classifier.prompted(t, "tiny_val"), moved)
    torch.testing.assert_close(moved.norm(dim=1), torch.ones(K))


def test_inference_of_mapped_and_unmapped_datasets():
    _, model = build(SWITCHES["all"])
    model.eval()
    img = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": img, "dataset_name": "tiny_val", "task": "semantic",
                      "height": 64, "width": 80}])
    assert out[0]["sem_seg"].shape == (K, 64, 80)
    model.set_vocabulary("tiny_new", torch.randn(K, D), IS_THING)
    with pytest.raises(KeyError, match="TEST_MAP"):
        with torch.no_grad():
            model([{"image": img, "dataset_name": "tiny_new", "task": "semantic"}])


def test_dataset_index_errors():
    with pytest.raises(ValueError, match="owns no modules"):
        DatasetIndex(["a", "b"], {"v": "c"})
    with pytest.raises(ValueError, match="duplicates"):
        DatasetIndex(["a", "a"])
    cfg, _ = build({})
    cfg.MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP = ["no_colon"]
    with pytest.raises(ValueError, match="test_dataset:owner_dataset"):
        DatasetIndex.from_cfg(cfg)
