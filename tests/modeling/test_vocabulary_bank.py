"""The vocabulary bank embeds a registered dataset's class synonyms with the embedder it was
given, once (``preload`` or first ``get``), and keeps the L2-normalised rows."""
import pytest
import torch
from detectron2.data import MetadataCatalog

from dataseg.modeling.vocabulary_bank import VocabularyBank
from dataseg.text import TextEmbedder


@pytest.fixture
def registered():
    MetadataCatalog.get("vb_tiny").set(task="semantic", class_synonyms=[["a", "aa"], ["b"]],
                                       is_thing=[False, True])
    yield "vb_tiny"
    MetadataCatalog.remove("vb_tiny")


def test_injected_embedder_called_once_at_preload(registered):
    calls = []

    def embedder(class_synonyms):
        calls.append(class_synonyms)
        return torch.tensor([[3.0, 4.0], [0.0, 2.0]])

    bank = VocabularyBank(embedder, text_dim=2)
    bank.preload([registered])
    assert [c.class_synonyms for c in calls] == [(("a", "aa"), ("b",))]
    emb, thing = bank.get(registered)
    bank.preload([registered])
    assert len(calls) == 1  # embedded once
    assert torch.allclose(emb, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert thing.tolist() == [False, True]


def test_default_embedder_and_unknown_name():
    assert isinstance(VocabularyBank().embedder, TextEmbedder)
    with pytest.raises(KeyError, match="vb_missing"):
        VocabularyBank(lambda s: torch.ones(len(s), 2)).preload(["vb_missing"])


def test_a_vocabulary_added_by_value_is_embedded_once_on_first_use():
    from dataseg.vocabulary import parse_vocabulary

    calls = []

    def embedder(vocabulary):
        calls.append(vocabulary)
        return torch.ones(len(vocabulary), 2)

    bank = VocabularyBank(embedder, text_dim=2)
    vocab = parse_vocabulary("cat; sofa | couch; grass:stuff")
    bank.add("run_time", vocab, task="semantic")
    assert "run_time" in bank and calls == [] and not bank.is_embedded(vocab)
    emb, thing = bank.get("run_time")
    bank.get("run_time")
    assert calls == [vocab] and emb.shape == (3, 2) and thing.tolist() == [True, True, False]
    assert bank.task("run_time") == "semantic" and bank.vocabulary("run_time") is vocab
    assert bank.is_embedded(parse_vocabulary("cat;sofa|couch;grass:stuff"))  # same classes
    bank.add("run_time", vocab, task="semantic")  # the same vocabulary again: kept
    bank.get("run_time")
    assert len(calls) == 1
    bank.set("run_time", torch.ones(1, 2), [True])  # set() overrides the added vocabulary
    with pytest.raises(KeyError, match="run_time"):
        bank.vocabulary("run_time")
    with pytest.raises(TypeError, match="Vocabulary"):
        bank.add("x", [["cat"]])
