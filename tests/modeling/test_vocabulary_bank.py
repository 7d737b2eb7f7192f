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
