"""Export of the inference network for one fixed vocabulary, and a predictor that runs it.

``export_model(predictor, output_dir, size)`` writes

- ``model.onnx``: ``images (1, 3, H, W) float32`` (normalised, zero-padded, as
  ``preprocess_images`` makes them) -> ``pred_logits (1, Q, K+1)``, ``pred_masks
  (1, Q, H/4, W/4)``: backbone, pixel decoder (deformable attention through its PyTorch path),
  masked-attention decoder and the text classifier with the vocabulary's text embeddings baked
  in as constants. Batch 1; H and W are dynamic (any multiple of the size divisibility): the
  graph is traced at ``size`` with the sizes kept symbolic (the deformable attention's level
  split reads them as traced tensors, see ``ms_deform_attn_pytorch``), and checked at a second,
  non-square size before it is kept. ``ExportedPredictor`` therefore preprocesses exactly as
  the eager predictor does (``ResizeShortestEdge`` to the test size, zero padding to the size
  divisibility, crop back and resize to the original size) and gives its outputs for any
  image. Should a backbone not trace with symbolic sizes, the graph is exported at the fixed
  ``size`` instead (``model.json`` "dynamic_size": false) and ``ExportedPredictor`` refuses,
  in one line, images whose padded size is not that size.
- ``model.ts`` (TorchScript, traced; same contract) when tracing works;
- ``model.json``: what the Python side needs (input size, pixel mean/std, input format, task,
  class synonyms, thing flags, post-processing settings, the baked-in dataset-specific modules).

``optimize_onnx`` writes ``model.opt.onnx`` beside it (onnxruntime's graph optimisations
applied offline, what the predictor loads when present) and ``quantize_onnx`` an int8
``model.int8.onnx`` (onnxruntime.quantization, dynamic or static with calibration images).

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
from typing import Iterable, Optional, Sequence, Tuple, Union

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
           "compare_with_eager", "default_export_size", "optimize_onnx", "quantize_onnx",
           "PRECISIONS", "QUANTIZE_MODES", "CHECK_SIZES", "aspect_ratio_variants",
           "training_images"]

logger = logging.getLogger(__name__)
ONNX_OPSET = 17
# model files of one export: what ExportedPredictor(precision=...) loads
PRECISIONS = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
OPTIMIZED = "model.opt.onnx"
QUANTIZE_MODES = ("dynamic", "static")


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


def _probe_size(h: int, w: int, div: int) -> Tuple[int, int]:
    """A second input size, of another aspect ratio, to check a dynamic graph on."""
    return h + div, w + 3 * div


def _onnx_export(net, example, path, dynamic: bool) -> None:
    axes = ({"images": {2: "height", 3: "width"},
             "pred_masks": {2: "mask_height", 3: "mask_width"}} if dynamic else None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks and Python ints
        atomic_write(path, lambda tmp: torch.onnx.export(
            net, (example,), tmp, input_names=["images"],
            output_names=["pred_logits", "pred_masks"], opset_version=ONNX_OPSET,
            dynamic_axes=axes, dynamo=False))


def _session(path, num_threads: Optional[int] = None, optimization: str = "all"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _dynamic_graph_matches(net, path, size, div) -> Optional[str]:
    """None when the dynamic graph at ``path`` gives the eager network's outputs at a
    non-square size other than the traced one; else why not (one line)."""
    probe = torch.randn(1, 3, *_probe_size(*size, div), generator=torch.Generator().manual_seed(0))
    try:
        logits, masks = _session(path).run(None, {"images": probe.numpy()})
    except Exception as e:  # a graph with a size frozen in fails to run at another size
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    with torch.no_grad():
        ref_logits, ref_masks = net(probe)
    if masks.shape != tuple(ref_masks.shape):
        return f"mask shape {masks.shape} != eager {tuple(ref_masks.shape)}"
    diff = max(float(np.abs(logits - ref_logits.numpy()).max()),
               float(np.abs(masks - ref_masks.numpy()).max()))
    return None if diff <= 1e-3 else f"max abs difference {diff:.3g} from eager"


def export_model(predictor, output_dir: Union[str, Path], size: Tuple[int, int],
                 torchscript: bool = True, dataset: Optional[str] = None,
                 dynamic: bool = True) -> dict:
    """Exports ``predictor.model`` (a ``DaTaSegPredictor``) with its current vocabulary and
    task. ``size``: the (H, W) the graph is traced at (multiples of the size divisibility);
    with ``dynamic`` the graph takes any such size (checked at a second, non-square size; a
    graph that fails the check is exported again at the fixed ``size``, with a warning).
    ``dataset``: whose dataset-specific modules to bake in; required (one-line ValueError
    listing the model's datasets otherwise) when the model has such modules, unused when it
    has none. Returns {"onnx": path, "dynamic_size": bool, "torchscript": path or None,
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
    for stale in (OPTIMIZED, PRECISIONS["int8"]):  # made from a previous model.onnx
        (output_dir / stale).unlink(missing_ok=True)
    _onnx_export(net, example, onnx_path, dynamic)
    if dynamic:
        why = _dynamic_graph_matches(net, onnx_path, (h, w), div)
        if why is not None:
            logger.warning("the graph with dynamic height/width does not match eager at "
                           "another size (%s); exporting at the fixed size %dx%d", why, h, w)
            dynamic = False
            _onnx_export(net, example, onnx_path, False)
    result = {"onnx": onnx_path, "dynamic_size": dynamic, "torchscript": None,
              "torchscript_error": None}
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
        "input_size": [h, w], "dynamic_size": dynamic, "size_divisibility": int(div),
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(), "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST), "task": predictor.task,
        "class_synonyms": [list(s) for s in predictor.vocabulary.class_synonyms],
        "is_thing": [bool(x) for x in is_thing.tolist()],
        "postprocess": model.postprocess_settings(), "onnx_opset": ONNX_OPSET,
        "dataset_specific": specific, "int8": None,
    }
    json_path = output_dir / "model.json"
    atomic_write_bytes(json_path, json.dumps(info, indent=1).encode("utf-8"))
    result["json"] = json_path
    return result


def optimize_onnx(export_dir: Union[str, Path], level: str = "extended") -> Path:
    """Writes ``DIR/model.opt.onnx``: ``DIR/model.onnx`` with onnxruntime's graph
    optimisations up to ``level`` ("basic" or "extended": constant folding, fused
    Conv+activation, LayerNorm, GELU, MatMul+Add; "all" adds layouts tied to this CPU, so is
    not written to a file) applied once, offline. Returns its path."""
    import onnxruntime as ort

    if level not in ("basic", "extended"):
        raise ValueError(f"optimize_onnx: level must be 'basic' or 'extended', got {level!r}")
    export_dir = Path(export_dir)
    out = export_dir / OPTIMIZED

    def write(tmp):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                                         if level == "basic" else
                                         ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        opts.optimized_model_filepath = tmp
        ort.InferenceSession(str(export_dir / "model.onnx"), opts,
                             providers=["CPUExecutionProvider"])

    atomic_write(out, write)
    return out


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed images (any size: the graph is
    dynamic)."""

    def __init__(self, tensors):
        self._it = iter(tensors)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {"images": x}


def quantize_onnx(export_dir: Union[str, Path], mode: str,
                  calibration_images: Optional[Iterable[np.ndarray]] = None) -> Path:
    """Writes ``DIR/model.int8.onnx``, an int8 version of ``DIR/model.onnx``, and records it
    in ``DIR/model.json`` ("int8": {"mode", ...}).

    mode "dynamic": int8 weights of MatMul/Gemm (the transformer layers, the projections and
    the text classifier), activations quantised at run time; "static": QDQ int8 weights and
    activations of Conv, MatMul and Gemm, activation ranges calibrated (min-max) by running
    ``calibration_images`` (BGR HxWx3 uint8, e.g. from the training set) through
    ``ExportedPredictor.preprocess``. Returns the path."""
    from onnxruntime import quantization as q

    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize: mode must be one of {QUANTIZE_MODES}, got {mode!r}")
    export_dir = Path(export_dir)
    src = export_dir / "model.onnx"
    out = export_dir / PRECISIONS["int8"]
    info = json.loads((export_dir / "model.json").read_text())
    record = {"mode": mode}
    tensors = None
    if mode == "static":
        if calibration_images is None:
            raise ValueError("quantize static: calibration images are needed")
        fp32 = ExportedPredictor(export_dir, precision="fp32", _check_dataset=False)
        tensors = [fp32.preprocess(im)[0].tensor.numpy() for im in calibration_images]
        if not tensors:
            raise ValueError("quantize static: no calibration images")
        record["calibration_images"] = len(tensors)
    # onnxruntime.quantization logs advice per node on the root logger: quiet while it runs
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(logging.ERROR)
    try:
        if mode == "dynamic":
            atomic_write(out, lambda tmp: q.quantize_dynamic(
                str(src), tmp, op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=q.QuantType.QInt8))
        else:
            atomic_write(out, lambda tmp: q.quantize_static(
                str(src), tmp, _CalibrationReader(tensors), quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax))
    finally:
        root.setLevel(root_level)
    info["int8"] = record
    atomic_write_bytes(export_dir / "model.json", json.dumps(info, indent=1).encode("utf-8"))
    return out


class ExportedPredictor:
    """Runs an exported model with onnxruntime (CPU) and the shared Python post-processing;
    same call contract and outputs as ``DaTaSegPredictor`` (BGR HxWx3 uint8 in).

    Images are resized and padded exactly as the eager predictor does (``ResizeShortestEdge``
    to MIN_SIZE_TEST / MAX_SIZE_TEST, zero padding to the size divisibility), so a graph with
    dynamic height/width gives the eager outputs for any image. An export with a fixed input
    size (``model.json`` "dynamic_size" false, or older exports) takes only images that pad to
    that size: others are refused with one-line ValueError.

    ``dataset``: for an export with dataset-specific modules, the dataset to predict for; it
    must be one the baked-in copies serve (ValueError naming them otherwise). ``self.dataset``
    is then the dataset the export was made for (None for a model without such modules).
    ``precision``: "fp32" (``model.onnx``, or ``model.opt.onnx`` when written) or "int8"
    (``model.int8.onnx``, written by ``--quantize``). ``optimization``: onnxruntime's graph
    optimisation level at load ("all", the default; "extended", "basic", "disable").
    """

    def __init__(self, export_dir: Union[str, Path], num_threads: Optional[int] = None,
                 dataset: Optional[str] = None, precision: str = "fp32",
                 optimization: str = "all", _check_dataset: bool = True):
        export_dir = Path(export_dir)
        if precision not in PRECISIONS:
            raise ValueError(f"exported model: precision must be one of {list(PRECISIONS)}, "
                             f"got {precision!r}")
        model_file = PRECISIONS[precision]
        if precision == "fp32" and (export_dir / OPTIMIZED).is_file():
            model_file = OPTIMIZED
        for f in (model_file, "model.json"):
            if not (export_dir / f).is_file():
                hint = " --quantize" if f == PRECISIONS["int8"] else ""
                raise FileNotFoundError(f"exported model: {export_dir / f} is missing (run "
                                        f"tools/export_model.py{hint})")
        self.export_dir = export_dir
        self.model_path = export_dir / model_file
        self.precision = precision
        self.info = json.loads((export_dir / "model.json").read_text())
        specific = self.info.get("dataset_specific")
        self.dataset = None
        if specific:
            baked = specific["dataset"]
            if _check_dataset and (dataset is None or dataset not in specific["serves"]):
                given = "no dataset" if dataset is None else f"dataset='{dataset}'"
                raise ValueError(f"exported model {export_dir} holds the dataset-specific "
                                 f"modules of '{baked}' (serving {specific['serves']}); "
                                 f"{given} given: pass dataset='{baked}'")
            self.dataset = baked
        self.session = _session(self.model_path, num_threads, optimization)
        self.input_size = tuple(self.info["input_size"])
        self.dynamic_size = bool(self.info.get("dynamic_size", False))
        self.size_divisibility = int(self.info.get("size_divisibility", 32))
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

    def pad(self, images: Sequence[torch.Tensor]):
        """(3, h, w) resized images in INPUT.FORMAT -> normalised ImageList padded as the
        eager model pads (a fixed-size export: to its size, refusing images that the eager
        model would pad to another size)."""
        batch = preprocess_images(images, self.pixel_mean, self.pixel_std,
                                  self.size_divisibility)
        if not self.dynamic_size and tuple(batch.tensor.shape[-2:]) != self.input_size:
            h, w = batch.image_sizes[0]
            raise ValueError(f"exported model {self.export_dir} has the fixed input size "
                             f"{self.input_size[0]}x{self.input_size[1]}: an image resized to "
                             f"{h}x{w} pads to {batch.tensor.shape[-2]}x{batch.tensor.shape[-1]}"
                             "; export again (tools/export_model.py) for any size")
        return batch

    def preprocess(self, original_image: np.ndarray):
        """BGR HxWx3 uint8 -> (normalised padded ImageList, (height, width))."""
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(
            np.ascontiguousarray(original_image))
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return self.pad([tensor]), (height, width)

    def inference(self, images, output_sizes: Sequence[Tuple[int, int]],
                  task: Optional[str] = None) -> list:
        """A padded ImageList of one image -> ``postprocess_logits`` outputs at
        ``output_sizes`` (as the eager model's ``inference_from_logits``)."""
        logits, masks = self.run_network(images.tensor)
        return postprocess_logits(logits, masks, tuple(images.tensor.shape[-2:]),
                                  images.image_sizes, output_sizes, task or self.task,
                                  self.is_thing, **self.info["postprocess"])

    def __call__(self, original_image: np.ndarray) -> dict:
        """BGR HxWx3 uint8 -> Detectron2-format outputs, as ``DaTaSegPredictor``."""
        images, out_size = self.preprocess(original_image)
        return self.inference(images, [out_size])[0]


def default_export_size(cfg, divisibility: int) -> Sequence[int]:
    """Square MIN_SIZE_TEST rounded up to the divisibility: the size traced (the graph takes
    any multiple of the divisibility)."""
    s = int(cfg.INPUT.MIN_SIZE_TEST)
    s = (s + divisibility - 1) // divisibility * divisibility
    return [s, s]


# (height, width) of the end-to-end check's images: square, 3:2 (skimage's chelsea photo is
# 300x451), 2:3, 4:3 landscape (its rocket photo is 427x640) and a 1:3 strip
CHECK_SIZES = ((256, 256), (300, 451), (451, 300), (427, 640), (120, 360))


def _first_images(names: Sequence[str], n: int) -> list:
    """Up to ``n`` BGR images of the registered datasets ``names``, taken in turn."""
    import cv2
    from detectron2.data import DatasetCatalog

    lists = []
    for name in names:
        try:
            lists.append(list(DatasetCatalog.get(name)))
        except KeyError:  # not registered: skipped
            continue
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        for records in lists:
            if len(out) < n and i < len(records):
                image = cv2.imread(records[i]["file_name"], cv2.IMREAD_COLOR)
                if image is not None:
                    out.append(image)
    return out


def training_images(cfg, n: int) -> list:
    """Up to ``n`` BGR images from DATASETS.TRAIN, taken in turn from each set (the
    calibration set of a static int8 export)."""
    return _first_images(list(cfg.DATASETS.TRAIN), n)


def aspect_ratio_variants(cfg, size: Sequence[int] = (128, 128)) -> list:
    """The end-to-end check's images: the first test image of the model's datasets (else a
    generated picture of smooth blobs) resized to each of ``CHECK_SIZES``."""
    import cv2

    images = _first_images(list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN), 1)
    if images:
        base = images[0]
    else:
        rng = np.random.default_rng(0)
        base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (size[1], size[0]),
                          interpolation=cv2.INTER_CUBIC)
    return [cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR) for h, w in CHECK_SIZES]


def _panoptic_categories(panoptic) -> torch.Tensor:
    """(panoptic_seg, segments_info) -> HxW category per pixel (-1 = void)."""
    seg, info = panoptic
    cats = torch.full_like(seg, -1, dtype=torch.long)
    for s in info:
        cats[seg == s["id"]] = int(s["category_id"])
    return cats


def compare_with_eager(predictor, exported: "ExportedPredictor", images_bgr) -> dict:
    """End to end, eager predictor vs exported predictor, each on the original images (their
    own resizing, padding and post-processing), with the network compared on the same input.

    Returns {"max_abs_logit_diff", "max_abs_mask_diff" (network outputs on the eager model's
    padded input of each image), "argmax_agreement" (fraction of pixels at the original size
    whose semantic argmax agrees; from the full outputs' "sem_seg" when the task gives one,
    else the semantic post-processing of each side's logits), "panoptic_agreement" and
    "panoptic_segments_equal" (panoptic task: fraction of pixels with the same segment category;
    fraction of images with the same (category, thing) segments), "instances_equal" (instance
    tasks: fraction of images with the same class list), "pixels", "sizes" (original sizes)}.
    """
    model = predictor.model
    text_embed, is_thing = model.vocabulary.get(predictor.vocabulary_name, model.device)
    max_l = max_m = 0.0
    same = total = pan_same = seg_equal = inst_equal = 0
    sizes = []
    settings = model.postprocess_settings()
    task = exported.task
    for image in images_bgr:
        inputs = predictor.preprocess(image)
        images = model.preprocess([inputs])
        out_size = (inputs["height"], inputs["width"])
        sizes.append(list(out_size))
        with torch.no_grad():
            l_eager, m_eager = model.network(images.tensor, text_embed,
                                             dataset=exported.dataset)
            eager_out = model.inference_from_logits(l_eager, m_eager, [inputs], images,
                                                    task, is_thing)[0]
        l_eager, m_eager = l_eager.cpu(), m_eager.cpu()
        onnx_images, onnx_size = exported.preprocess(image)
        l_onnx, m_onnx = exported.run_network(onnx_images.tensor)
        if l_onnx.shape == l_eager.shape and m_onnx.shape == m_eager.shape:
            max_l = max(max_l, float((l_eager - l_onnx).abs().max()))
            max_m = max(max_m, float((m_eager - m_onnx).abs().max()))
        else:  # cannot happen for a dynamic graph: the padded sizes are the same
            max_l = max_m = float("inf")
        onnx_out = postprocess_logits(l_onnx, m_onnx, tuple(onnx_images.tensor.shape[-2:]),
                                      onnx_images.image_sizes, [onnx_size], task,
                                      exported.is_thing, **exported.info["postprocess"])[0]
        if "sem_seg" in eager_out:
            segs = [eager_out["sem_seg"].argmax(0), onnx_out["sem_seg"].argmax(0)]
        else:
            segs = [postprocess_logits(lg, mk, tuple(ims.tensor.shape[-2:]), ims.image_sizes,
                                       [out_size], "semantic", is_thing.cpu(),
                                       **settings)[0]["sem_seg"].argmax(0)
                    for lg, mk, ims in ((l_eager, m_eager, images),
                                        (l_onnx, m_onnx, onnx_images))]
        same += int((segs[0] == segs[1]).sum())
        total += segs[0].numel()
        if "panoptic_seg" in eager_out:
            a, b = (_panoptic_categories(o["panoptic_seg"]) for o in (eager_out, onnx_out))
            pan_same += int((a == b).sum())
            key = [[(s["category_id"], s["isthing"]) for s in o["panoptic_seg"][1]]
                   for o in (eager_out, onnx_out)]
            seg_equal += int(key[0] == key[1])
        if "instances" in eager_out:
            inst_equal += int(eager_out["instances"].pred_classes.tolist()
                              == onnx_out["instances"].pred_classes.tolist())
    n = max(len(sizes), 1)
    stats = {"max_abs_logit_diff": max_l, "max_abs_mask_diff": max_m,
             "argmax_agreement": same / max(total, 1), "pixels": total, "sizes": sizes}
    if task == "panoptic":
        stats["panoptic_agreement"] = pan_same / max(total, 1)
        stats["panoptic_segments_equal"] = seg_equal / n
    if task in ("instance", "box"):
        stats["instances_equal"] = inst_equal / n
    return stats
