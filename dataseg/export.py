"""Export of the inference network for one fixed vocabulary, and a predictor that runs it.

``export_model(predictor, output_dir, size)`` writes

- ``model.onnx``: ``images (1, 3, H, W) float32`` (normalised, zero-padded, as
  ``preprocess_images`` makes them) -> ``pred_logits (1, Q, K+1)``, ``pred_masks
  (1, Q, H/4, W/4)``: backbone, pixel decoder (deformable attention through its PyTorch path),
  masked-attention decoder and the text classifier with the vocabulary's text embeddings baked
  in as constants. All sizes are static: the graph is traced at one input size ``size``
  (H, W multiples of the size divisibility) and batch 1. ``ExportedPredictor`` resizes each
  image as the eager predictor does (``ResizeShortestEdge``), shrinks it further if it does
  not fit, and zero-pads it to (H, W).
- ``model.ts`` (TorchScript, traced; same contract) when tracing works;
- ``model.json``: what the Python side needs (input size, pixel mean/std, input format, task,
  class synonyms, thing flags, post-processing settings, the baked-in dataset-specific modules).

A model with dataset-specific modules (``MODEL.DATASEG.DATASET_SPECIFIC``, paper Table 5) is
exported for one dataset, ``dataset=`` (``--dataset``): its copies of the queries, heads and
prompt tokens are baked into the graph, and ``ExportedPredictor`` asks for the same dataset.

MERGE and the per-task post-processing stay in Python, shared with the eager model:
``dataseg.modeling.meta_arch.postprocess_logits``.
"""
import json
import logging
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import transforms as T
from torch import nn

from dataseg.modeling.dataset_specific import model_dataset_index
from dataseg.modeling.meta_arch import postprocess_logits, preprocess_images
from dataseg.predictor import vocabulary_metadata
from dataseg.utils.atomic import atomic_write, atomic_write_bytes
from dataseg.vocabulary import Vocabulary

__all__ = ["ExportableNetwork", "export_model", "ExportedPredictor", "ONNX_OPSET",
           "compare_with_eager", "default_export_size"]

logger = logging.getLogger(__name__)
ONNX_OPSET = 17


class ExportableNetwork(nn.Module):
    """``DaTaSeg.network`` with fixed text embeddings (and, for dataset-specific modules, a
    fixed dataset): images -> (pred_logits, pred_masks)."""

    def __init__(self, model, text_embed: torch.Tensor, dataset: Optional[str] = None):
        super().__init__()
        self.model = model
        self.dataset = dataset
        self.register_buffer("text_embed", text_embed.detach().clone().float(), False)

    def forward(self, images: torch.Tensor):
        """(B, 3, H, W) normalised padded images -> (B, Q, K+1) logits, (B, Q, H/4, W/4)."""
        return self.model.network(images, self.text_embed, dataset=self.dataset)


def _force_pytorch_deform_attn(model) -> None:
    from dataseg.modeling.ops.ms_deform_attn import MSDeformAttn

    for m in model.modules():
        if isinstance(m, MSDeformAttn):
            m.impl = "pytorch"


def export_model(predictor, output_dir: Union[str, Path], size: Tuple[int, int],
                 torchscript: bool = True, dataset: Optional[str] = None) -> dict:
    """Exports ``predictor.model`` (a ``DaTaSegPredictor``) with its current vocabulary and
    task. ``dataset``: whose dataset-specific modules to bake in; required (one-line
    ValueError listing the model's datasets otherwise) when the model has such modules,
    unused when it has none. Returns {"onnx": path, "torchscript": path or None,
    "torchscript_error": str or None, "json": path}."""
    model = predictor.model.eval()
    div = model.size_divisibility
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0 or h % div or w % div:
        raise ValueError(f"export size {(h, w)} must be positive multiples of the size "
                         f"divisibility {div}")
    index = model_dataset_index(model)
    specific = None
    if index is not None:
        owner = index.require(dataset, "--dataset")
        specific = {"dataset": dataset, "owner": owner,
                    "serves": [n for n in index.names() if index.owner(n) == owner]}
    else:
        dataset = None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _force_pytorch_deform_attn(model)
    text_embed, is_thing = model.vocabulary.get(predictor.vocabulary_name, "cpu")
    net = ExportableNetwork(model.cpu(), text_embed, dataset).eval()
    example = torch.zeros(1, 3, h, w)
    onnx_path = output_dir / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on Python ints: sizes are static
        atomic_write(onnx_path, lambda tmp: torch.onnx.export(
            net, (example,), tmp, input_names=["images"],
            output_names=["pred_logits", "pred_masks"], opset_version=ONNX_OPSET,
            dynamo=False))
    result = {"onnx": onnx_path, "torchscript": None, "torchscript_error": None}
    if torchscript:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(net, (example,), check_trace=False)
            ts_path = output_dir / "model.ts"
            atomic_write(ts_path, lambda tmp: torch.jit.save(traced, tmp))
            result["torchscript"] = ts_path
        except Exception as e:  # optional format: report, keep the ONNX file
            result["torchscript_error"] = f"{type(e).__name__}: {e}"
            logger.warning("TorchScript export failed: %s", result["torchscript_error"])
    cfg = predictor.cfg
    info = {
        "input_size": [h, w], "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(), "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST), "task": predictor.task,
        "class_synonyms": [list(s) for s in predictor.vocabulary.class_synonyms],
        "is_thing": [bool(x) for x in is_thing.tolist()],
        "postprocess": model.postprocess_settings(), "onnx_opset": ONNX_OPSET,
        "dataset_specific": specific,
    }
    json_path = output_dir / "model.json"
    atomic_write_bytes(json_path, json.dumps(info, indent=1).encode("utf-8"))
    result["json"] = json_path
    return result


class ExportedPredictor:
    """Runs ``DIR/model.onnx`` with onnxruntime (CPU) and the shared Python post-processing;
    same call contract and outputs as ``DaTaSegPredictor`` (BGR HxWx3 uint8 in).

    ``dataset``: for an export with dataset-specific modules, the dataset to predict for; it
    must be one the baked-in copies serve (ValueError naming them otherwise). ``self.dataset``
    is then the dataset the export was made for (None for a model without such modules).
    """

    def __init__(self, export_dir: Union[str, Path], num_threads: Optional[int] = None,
                 dataset: Optional[str] = None):
        import onnxruntime as ort

        export_dir = Path(export_dir)
        for f in ("model.onnx", "model.json"):
            if not (export_dir / f).is_file():
                raise FileNotFoundError(f"exported model: {export_dir / f} is missing (run "
                                        "tools/export_model.py)")
        self.info = json.loads((export_dir / "model.json").read_text())
        specific = self.info.get("dataset_specific")
        self.dataset = None
        if specific:
            baked = specific["dataset"]
            if dataset is None or dataset not in specific["serves"]:
                given = "no dataset" if dataset is None else f"dataset='{dataset}'"
                raise ValueError(f"exported model {export_dir} holds the dataset-specific "
                                 f"modules of '{baked}' (serving {specific['serves']}); "
                                 f"{given} given: pass dataset='{baked}'")
            self.dataset = baked
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
        self.session = ort.InferenceSession(str(export_dir / "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.input_size = tuple(self.info["input_size"])
        self.pixel_mean = torch.tensor(self.info["pixel_mean"]).view(-1, 1, 1)
        self.pixel_std = torch.tensor(self.info["pixel_std"]).view(-1, 1, 1)
        self.is_thing = torch.tensor(self.info["is_thing"], dtype=torch.bool)
        self.task = self.info["task"]
        self.input_format = self.info["input_format"]
        self.aug = T.ResizeShortestEdge([self.info["min_size_test"]] * 2,
                                        self.info["max_size_test"])
        # the classes baked in, as the one Vocabulary type (dataseg/vocabulary.py)
        self.vocabulary = Vocabulary(self.info["class_synonyms"], self.info["is_thing"],
                                     source="file", origin=str(export_dir / "model.json"))
        self.metadata = vocabulary_metadata(self.vocabulary, "dataseg_exported")

    def run_network(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, H, W) normalised padded images -> (pred_logits, pred_masks) tensors."""
        logits, masks = self.session.run(None, {"images": images.numpy().astype(np.float32)})
        return torch.from_numpy(logits), torch.from_numpy(masks)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        image = self.aug.get_transform(image).apply_image(image)
        h, w = image.shape[:2]
        ph, pw = self.input_size
        if h > ph or w > pw:
            scale = min(ph / h, pw / w)
            nh, nw = min(ph, max(1, int(h * scale + 0.5))), min(pw, max(1, int(w * scale + 0.5)))
            image = T.ResizeTransform(h, w, nh, nw).apply_image(image)
        return image

    def preprocess(self, original_image: np.ndarray):
        """BGR HxWx3 uint8 -> (ImageList with the fixed padded size, (height, width))."""
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self._fit(np.ascontiguousarray(original_image))
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return preprocess_images([tensor], self.pixel_mean, self.pixel_std, 1,
                                 padded_size=self.input_size), (height, width)

    def __call__(self, original_image: np.ndarray) -> dict:
        """BGR HxWx3 uint8 -> Detectron2-format outputs, as ``DaTaSegPredictor``."""
        images, out_size = self.preprocess(original_image)
        logits, masks = self.run_network(images.tensor)
        return postprocess_logits(logits, masks, self.input_size, images.image_sizes,
                                  [out_size], self.task, self.is_thing,
                                  **self.info["postprocess"])[0]


def default_export_size(cfg, divisibility: int) -> Sequence[int]:
    """Square MIN_SIZE_TEST rounded up to the divisibility (square images then match the
    eager path exactly)."""
    s = int(cfg.INPUT.MIN_SIZE_TEST)
    s = (s + divisibility - 1) // divisibility * divisibility
    return [s, s]


def compare_with_eager(predictor, exported: "ExportedPredictor", images_bgr) -> dict:
    """Runs the eager network and the ONNX graph on identical padded inputs of each image
    (the eager side with the dataset-specific modules of ``exported.dataset``, if any).

    Returns {"max_abs_logit_diff", "max_abs_mask_diff" (over all images), "argmax_agreement"
    (fraction of pixels whose semantic argmax, from the shared post-processing of each side's
    logits, is the same), "pixels"}.
    """
    model = predictor.model
    text_embed, is_thing = model.vocabulary.get(predictor.vocabulary_name, model.device)
    max_l = max_m = 0.0
    same = total = 0
    settings = model.postprocess_settings()
    for image in images_bgr:
        images, out_size = exported.preprocess(image)
        with torch.no_grad():
            l_eager, m_eager = model.network(images.tensor.to(model.device), text_embed,
                                             dataset=exported.dataset)
        l_eager, m_eager = l_eager.cpu(), m_eager.cpu()
        l_onnx, m_onnx = exported.run_network(images.tensor)
        max_l = max(max_l, float((l_eager - l_onnx).abs().max()))
        max_m = max(max_m, float((m_eager - m_onnx).abs().max()))
        segs = [postprocess_logits(lg, mk, exported.input_size, images.image_sizes,
                                   [out_size], "semantic", is_thing.cpu(),
                                   **settings)[0]["sem_seg"].argmax(0)
                for lg, mk in ((l_eager, m_eager), (l_onnx, m_onnx))]
        same += int((segs[0] == segs[1]).sum())
        total += segs[0].numel()
    return {"max_abs_logit_diff": max_l, "max_abs_mask_diff": max_m,
            "argmax_agreement": same / max(total, 1), "pixels": total}
