"""The train vocabularies are embedded when the trainer is built (by the text embedder injected
into the model), so the first training forward loads no text encoder and reads no cache."""
from engine_helpers import QUICKSTART, tiny_opts, write_random_semantic

from dataseg.data.register import register_semantic_dataset, unregister_dataset
from dataseg.engine import DaTaSegTrainer, build_cfg
from dataseg.text import TextEmbedder


def test_trainer_embeds_train_vocabularies_at_build(tmp_path):
    image_root, label_root = write_random_semantic(tmp_path, 2, num_classes=3)
    register_semantic_dataset("preload_sem", str(image_root), str(label_root),
                              ["wall", "floor", "sky"], replace=True)
    try:
        cfg = build_cfg(QUICKSTART, tiny_opts(tmp_path, tmp_path / "out", max_iter=1,
                                              train=("preload_sem",), test=()))
        trainer = DaTaSegTrainer(cfg)
        bank = trainer.model.vocabulary
        assert isinstance(bank.embedder, TextEmbedder)  # injected from cfg.MODEL.TEXT_ENCODER
        assert bank.embedder.embed_kwargs["cache_dir"] == str(tmp_path / "text_cache")
        assert "preload_sem" in bank and bank.get("preload_sem")[0].shape[0] == 3

        def no_embedding(class_synonyms):
            raise AssertionError(f"embedded {class_synonyms} during training")

        bank.embedder = no_embedding
        trainer.train()  # one iteration: the forward finds the vocabulary in the bank
        assert trainer.iter == 1  # the one iteration ran to its end
    finally:
        unregister_dataset("preload_sem")
