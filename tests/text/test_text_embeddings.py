"""Text embeddings with the real offline all-MiniLM-L6-v2, the cache, the CLI and the CLIP path."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dataseg.text as text
from dataseg.text import (
    DEFAULT_TEMPLATES,
    cache_entry_path,
    embed_vocabulary,
    embedding_dim,
    text_encoder_kwargs_from_cfg,
)
from dataseg.text import encoders as enc

REPO = Path(__file__).resolve().parents[2]
VOCAB = [["wall"], ["building", "edifice"], ["windowpane", "window"], ["sky"], ["dog", "puppy"]]


@pytest.fixture(scope="module")
def minilm_emb(tmp_path_factory):
    """One real encoding shared by the module (MiniLM loads once per process)."""
    cache = tmp_path_factory.mktemp("te_cache")
    return cache, embed_vocabulary(VOCAB, "minilm", cache_dir=cache)


def _no_load(*a, **k):
    raise AssertionError("the encoder was loaded on a cache hit")


def test_shape_and_unit_norm(minilm_emb):
    _, emb = minilm_emb
    assert emb.dtype == torch.float32 and emb.shape == (len(VOCAB), 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(VOCAB)), atol=1e-5)
    assert embedding_dim("minilm") == 384


def test_synonyms_across_vocabularies_are_close(minilm_emb, tmp_path):
    _, emb = minilm_emb
    other = embed_vocabulary([["window"], ["cat"], ["skyscraper"]], cache_dir=tmp_path)
    window_vs_window = float(emb[2] @ other[0])
    window_vs_cat = float(emb[2] @ other[1])
    sky_vs_window = float(emb[3] @ other[0])
    assert window_vs_window > 0.8
    assert window_vs_window > window_vs_cat + 0.2
    assert window_vs_window > sky_vs_window + 0.2
    # a building is closer to a skyscraper than a dog is
    assert float(emb[1] @ other[2]) > float(emb[4] @ other[2])


def test_embedding_is_mean_over_synonyms_and_templates(minilm_emb):
    _, emb = minilm_emb
    model = enc.load_encoder("minilm")
    sents = [t.replace("{}", n) for n in VOCAB[1] for t in DEFAULT_TEMPLATES]
    expected = torch.nn.functional.normalize(model.encode(sents).mean(0), dim=0)
    assert torch.allclose(emb[1], expected, atol=1e-5)


def test_cache_hit_does_not_load_encoder(minilm_emb, monkeypatch):
    cache, emb = minilm_emb
    manifest = json.loads(cache_entry_path(VOCAB, cache_dir=cache).with_suffix(".json").read_text())
    assert manifest["class_synonyms"] == VOCAB and manifest["shape"] == [len(VOCAB), 384]
    monkeypatch.setattr(text, "load_encoder", _no_load)
    again = embed_vocabulary(VOCAB, "minilm", cache_dir=cache)
    assert torch.equal(again, emb)
    # no temp files left behind
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATASEG_CACHE", str(tmp_path))
    assert cache_entry_path(VOCAB).parent == tmp_path / "text_embeddings"
    embed_vocabulary([["cat"]])
    assert cache_entry_path([["cat"]]).is_file()


def test_templates_and_names_change_the_key(minilm_emb):
    cache, _ = minilm_emb
    base = cache_entry_path(VOCAB, cache_dir=cache)
    assert cache_entry_path(VOCAB, templates=["a photo of a {}."], cache_dir=cache) != base
    assert cache_entry_path(VOCAB[:-1], cache_dir=cache) != base
    assert cache_entry_path(VOCAB, "clip", checkpoint="x.pt", cache_dir=cache) != base


def test_templates_change_the_embedding(minilm_emb, tmp_path):
    _, emb = minilm_emb
    other = embed_vocabulary(VOCAB, templates=["{}"], cache_dir=tmp_path)
    assert not torch.allclose(other, emb, atol=1e-4)


def test_corrupt_cache_file_is_recomputed(minilm_emb, tmp_path, caplog, monkeypatch):
    _, emb = minilm_emb
    # an in-process training test before this one may have set the "dataseg" logger up as
    # Detectron2 does (propagate=False, its own handlers); caplog listens on the root logger
    monkeypatch.setattr(logging.getLogger("dataseg"), "propagate", True)
    path = cache_entry_path(VOCAB, cache_dir=tmp_path)
    embed_vocabulary(VOCAB, cache_dir=tmp_path)
    path.write_bytes(b"not a tensor")
    with caplog.at_level(logging.WARNING):
        again = embed_vocabulary(VOCAB, cache_dir=tmp_path)
    assert str(path) in caplog.text
    assert torch.allclose(again, emb, atol=1e-6)
    assert torch.equal(torch.load(path, weights_only=True), again)


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match=r"class_synonyms\[1\]"):
        embed_vocabulary([["cat"], []], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="placeholder"):
        embed_vocabulary([["cat"]], templates=["a photo"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
        embed_vocabulary([["cat"]], "bert", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="CHECKPOINT"):
        embed_vocabulary([["cat"]], "clip", clip_model="RN50", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_ckpt.pt"):
        embed_vocabulary([["cat"]], "clip", clip_model="RN50",
                         checkpoint=str(tmp_path / "missing_ckpt.pt"), cache_dir=tmp_path)


def test_kwargs_from_cfg():
    from detectron2.config import get_cfg

    from dataseg.config import add_dataseg_config

    cfg = add_dataseg_config(get_cfg())
    kw = text_encoder_kwargs_from_cfg(cfg)
    assert kw == {"encoder": "minilm", "templates": tuple(DEFAULT_TEMPLATES),
                  "clip_model": "ViT-L-14", "checkpoint": "", "cache_dir": None}
    assert embedding_dim("clip", cfg.MODEL.TEXT_ENCODER.CLIP_MODEL) == 768


def test_cli_names_and_names_file(tmp_path):
    names_file = tmp_path / "classes.txt"
    names_file.write_text("cat\n# a comment\ndog, puppy\n")
    cache = tmp_path / "cache"
    out = subprocess.run([sys.executable, "-m", "dataseg.text", "--names-file", str(names_file),
                          "--names", "cat", "dog, puppy", "--cache-dir", str(cache)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = cache_entry_path([["cat"], ["dog", "puppy"]], cache_dir=cache)
    assert out.stdout.count(str(expected)) == 2 and expected.is_file()
    bad = subprocess.run([sys.executable, "-m", "dataseg.text", "--names-file",
                          str(tmp_path / "nope.txt")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert bad.returncode != 0 and "nope.txt" in bad.stderr


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                            "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}


def test_clip_path_with_local_checkpoint(tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    cfg_path = tmp_path / "dataseg-tiny-clip-test.json"
    cfg_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model("dataseg-tiny-clip-test")
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)

    assert embedding_dim("clip", "dataseg-tiny-clip-test") == 16
    emb = embed_vocabulary([["cat"], ["dog", "puppy"]], "clip", clip_model="dataseg-tiny-clip-test",
                           checkpoint=str(ckpt), cache_dir=tmp_path / "c")
    assert emb.shape == (2, 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    tok = open_clip.get_tokenizer("dataseg-tiny-clip-test")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.eval().encode_text(
            tok([t.replace("{}", "cat") for t in DEFAULT_TEMPLATES])), dim=-1).mean(0)
    assert torch.allclose(emb[0], torch.nn.functional.normalize(ref, dim=0), atol=1e-5)

    # a pretrained tag that cannot be had offline gives the advice to pass a local file
    with pytest.raises(RuntimeError, match="MODEL.TEXT_ENCODER.CHECKPOINT"):
        embed_vocabulary([["cat"]], "clip", clip_model="dataseg-tiny-clip-test",
                         checkpoint="openai", cache_dir=tmp_path / "c")
