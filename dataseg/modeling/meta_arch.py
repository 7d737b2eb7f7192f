"""The DaTaSeg meta-architecture: backbone -> pixel decoder -> masked-attention decoder ->
text-embedding classifier -> MERGE (per task) -> criterion (training) or per-task inference.

Each batch comes from one dataset (``"dataset_name"``); its vocabulary (frozen text embeddings
and thing flags) comes from a ``VocabularyBank``; the task is the input's ``"task"`` or the
dataset's metadata task (``cfg.MODEL.DATASEG.TEST.TASK`` overrides it at test time).

At test time an input without ``"dataset_name"`` uses the vocabulary of
``MODEL.DATASEG.TEST.VOCABULARY_DATASET`` / ``_FILE`` / ``_CLASSES`` (default: the first of
``DATASETS.TEST``; ``dataseg.config.default_vocabulary_from_cfg``), so
``detectron2.engine.DefaultPredictor`` works.
Inference is split in two so that an exported graph and the eager model share the Python
post-processing: ``network`` (normalised, padded images -> class and mask logits, pure tensors)
and ``postprocess_logits`` (MERGE + per-task inference in Detectron2's output formats).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..config import default_vocabulary_from_cfg, per_train_dataset
from ..contract import TASKS, get_dataset_info
from ..text import embedding_dim, text_embedder_from_cfg
from ..vocabulary import Vocabulary
from .criterion import SetCriterion
from .frozen_bn import cache_frozen_batchnorm
from .linear_classifier import FixedVocabularyClassifier, check_classifier_name
from .merge import classes_to_merge, merge_for_task, merge_predictions
from .pixel_decoder import build_pixel_decoder
from .postprocessing import (
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from .text_classifier import TextEmbeddingClassifier
from .transfer import host_to_device
from .transformer_decoder import MaskedAttentionDecoder
from .vocabulary_bank import VocabularyBank


def dataset_loss_weights_from_cfg(cfg) -> Dict[str, float]:
    """cfg.DATASETS.TRAIN_LOSS_WEIGHTS (one per DATASETS.TRAIN entry, empty = 1.0 each)."""
    weights = per_train_dataset(cfg, "TRAIN_LOSS_WEIGHTS", 1.0)
    return {n: float(w) for n, w in zip(cfg.DATASETS.TRAIN, weights)}


def text_dim_from_cfg(cfg) -> int:
    """CLASSIFIER.TEXT_DIM, or the text encoder's embedding size when it is 0."""
    if cfg.MODEL.DATASEG.CLASSIFIER.TEXT_DIM > 0:
        return int(cfg.MODEL.DATASEG.CLASSIFIER.TEXT_DIM)
    return int(embedding_dim(cfg.MODEL.TEXT_ENCODER.NAME, cfg.MODEL.TEXT_ENCODER.CLIP_MODEL))


def class_count_embedder(text_dim: int):
    """The vocabulary embedder of the fixed-vocabulary linear classifier: it reads only the
    number of classes, so no text encoder is loaded (zero rows of width ``text_dim``)."""
    def embed(class_synonyms):
        return torch.zeros(len(class_synonyms), text_dim)
    return embed


def preprocess_images(images: Sequence[torch.Tensor], pixel_mean: torch.Tensor,
                      pixel_std: torch.Tensor, size_divisibility: int,
                      padded_size: Optional[Tuple[int, int]] = None) -> ImageList:
    """(3, H, W) images (any dtype, in cfg.INPUT.FORMAT) -> normalised ImageList padded with
    zeros to a multiple of ``size_divisibility`` (or to exactly ``padded_size``, which must hold
    every image: the fixed input size of an exported model)."""
    normed = [(host_to_device(x, pixel_mean.device).float() - pixel_mean) / pixel_std
              for x in images]
    if padded_size is None:
        return ImageList.from_tensors(normed, size_divisibility)
    ph, pw = padded_size
    batch = normed[0].new_zeros((len(normed), normed[0].shape[0], ph, pw))
    for i, x in enumerate(normed):
        if x.shape[-2] > ph or x.shape[-1] > pw:
            raise ValueError(f"image of size {tuple(x.shape[-2:])} does not fit the fixed input "
                             f"size {tuple(padded_size)}")
        batch[i, :, :x.shape[-2], :x.shape[-1]] = x
    return ImageList(batch, [tuple(x.shape[-2:]) for x in normed])


def postprocess_logits(pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                       padded_size: Tuple[int, int], image_sizes: Sequence[Tuple[int, int]],
                       output_sizes: Sequence[Tuple[int, int]], task: str,
                       is_thing: torch.Tensor, *, merge_eps: float = 1e-6,
                       merge_empty_logit: float = -100.0, object_mask_threshold: float = 0.8,
                       overlap_threshold: float = 0.8,
                       instances_per_image: int = 100, merge: bool = True) -> List[dict]:
    """The Python post-processing shared by the eager model and exported graphs.

    Args:
        pred_logits: (B, Q, K+1) class logits (background last) of the last decoder layer.
        pred_masks: (B, Q, h, w) stride-4 mask logits of the padded batch.
        padded_size: (Hp, Wp) of the padded network input; image_sizes: each image's (H, W)
            inside it; output_sizes: the (height, width) each result is resized to.
        task: "semantic", "panoptic", "instance" or "box"; is_thing: (K,) bool.
        merge: apply MERGE first (DaTaSeg); False = Mask2Former's inference on the raw
            proposals (MODEL.DATASEG.TEST.MERGE, for converted Mask2Former models).
    Returns one dict per image in Detectron2's formats: {"sem_seg"} (semantic),
    {"panoptic_seg", "sem_seg"} (panoptic) or {"instances"} (instance, box).
    """
    if task not in TASKS:
        raise ValueError(f"DaTaSeg: task {task!r} not one of {TASKS}")
    is_thing = is_thing.to(pred_logits.device)
    if merge:
        outputs = merge_for_task(pred_logits, pred_masks, task, is_thing, merge_eps,
                                 merge_empty_logit)
    else:
        outputs = {"pred_logits": pred_logits, "pred_masks": pred_masks, "num_merged": 0,
                   "valid": torch.ones(pred_logits.shape[:2], dtype=torch.bool,
                                       device=pred_logits.device),
                   "counts": pred_logits.new_zeros((pred_logits.shape[0], 0))}
    results = []
    for i, (image_size, out_size) in enumerate(zip(image_sizes, output_sizes)):
        valid = outputs["valid"][i].clone()
        # empty merged entries (mask -100, logits 0) add nothing to any task's output
        m = outputs["num_merged"]
        valid[:m] &= outputs["counts"][i] > 0
        cls = outputs["pred_logits"][i][valid]
        masks = resize_mask_logits(outputs["pred_masks"][i][valid], tuple(padded_size),
                                   tuple(image_size), tuple(out_size))
        if task == "semantic":
            results.append({"sem_seg": semantic_inference(cls, masks)})
        elif task == "panoptic":
            results.append({
                "panoptic_seg": panoptic_inference(cls, masks, is_thing, object_mask_threshold,
                                                   overlap_threshold),
                "sem_seg": semantic_inference(cls, masks)})
        else:
            results.append({"instances": instance_inference(
                cls, masks, instances_per_image, is_thing)})
    return results


@META_ARCH_REGISTRY.register()
class DaTaSeg(nn.Module):
    """Universal multi-dataset, multi-task segmentation model (DaTaSeg, paper section 3)."""

    @configurable
    def __init__(self, *, backbone: Backbone, pixel_decoder: nn.Module,
                 transformer_decoder: MaskedAttentionDecoder,
                 classifier: nn.Module, criterion: SetCriterion,
                 vocabulary: Optional[VocabularyBank] = None, pixel_mean, pixel_std,
                 size_divisibility: int = 32, deep_supervision: bool = True,
                 merge_eps: float = 1e-6, merge_empty_logit: float = -100.0,
                 dataset_loss_weights: Optional[Dict[str, float]] = None,
                 test_task: str = "", default_vocabulary: str = "",
                 object_mask_threshold: float = 0.8,
                 overlap_threshold: float = 0.8, instances_per_image: int = 100,
                 channels_last: bool = False, test_merge: bool = True):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.classifier = classifier
        self.criterion = criterion
        self.vocabulary = vocabulary if vocabulary is not None else VocabularyBank(
            text_dim=classifier.text_dim)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.deep_supervision = deep_supervision
        self.merge_eps = merge_eps
        self.merge_empty_logit = merge_empty_logit
        self.dataset_loss_weights = dict(dataset_loss_weights or {})
        if test_task and test_task not in TASKS:
            raise ValueError(f"MODEL.DATASEG.TEST.TASK must be '' or one of {TASKS}, "
                             f"got {test_task!r}")
        self.test_task = test_task
        self.default_vocabulary = default_vocabulary
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.instances_per_image = instances_per_image
        self.test_merge = test_merge
        if channels_last:  # 4-D weights NHWC: convolutions follow (faster oneDNN paths on CPU)
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DATASEG
        text_dim = text_dim_from_cfg(cfg)
        # FrozenBN's affine transform computed once instead of on every call (same values)
        backbone = cache_frozen_batchnorm(build_backbone(cfg))
        pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
        if check_classifier_name(d.CLASSIFIER.NAME) == "linear":
            classifier = FixedVocabularyClassifier(cfg, text_dim=text_dim)
            embedder = class_count_embedder(text_dim)
        else:
            classifier = TextEmbeddingClassifier(cfg, text_dim=text_dim)
            embedder = text_embedder_from_cfg(cfg)
        bank = VocabularyBank(embedder, text_dim=text_dim)
        default = default_vocabulary_from_cfg(cfg)
        if isinstance(default, Vocabulary):  # TEST.VOCABULARY_FILE / _CLASSES
            bank.add(f"vocabulary_{default.key}", default)
            default = f"vocabulary_{default.key}"
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "transformer_decoder": MaskedAttentionDecoder(
                cfg, in_channels=d.PIXEL_DECODER.CONVS_DIM, text_dim=text_dim),
            "classifier": classifier,
            "criterion": SetCriterion(cfg),
            "vocabulary": bank,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": d.SIZE_DIVISIBILITY, "deep_supervision": d.DEEP_SUPERVISION,
            "merge_eps": d.MERGE_EPS, "merge_empty_logit": d.MERGE_EMPTY_LOGIT,
            "dataset_loss_weights": dataset_loss_weights_from_cfg(cfg),
            "test_task": d.TEST.TASK, "default_vocabulary": default,
            "object_mask_threshold": d.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": d.TEST.OVERLAP_THRESHOLD,
            "instances_per_image": d.TEST.INSTANCES_PER_IMAGE,
            "channels_last": d.CHANNELS_LAST, "test_merge": d.TEST.MERGE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def set_vocabulary(self, name: str, embeddings: torch.Tensor, is_thing,
                       task: Optional[str] = None) -> None:
        """Uses these text embeddings (K, D) and thing flags (K,) for inputs whose
        ``"dataset_name"`` is ``name``. ``task``: what such inputs without a ``"task"`` key get
        (default: the registered dataset's task, or "panoptic" for a name not registered)."""
        if task is not None and task not in TASKS:
            raise ValueError(f"set_vocabulary('{name}'): task {task!r} not one of {TASKS}")
        self.vocabulary.set(name, embeddings, is_thing, task=task)

    def postprocess_settings(self) -> dict:
        """Keyword arguments of ``postprocess_logits`` that come from the config."""
        return {"merge_eps": self.merge_eps, "merge_empty_logit": self.merge_empty_logit,
                "object_mask_threshold": self.object_mask_threshold,
                "overlap_threshold": self.overlap_threshold,
                "instances_per_image": self.instances_per_image, "merge": self.test_merge}

    # ------------------------------------------------------------------ helpers
    def batch_dataset_name(self, batched_inputs: List[dict]) -> str:
        """The batch's vocabulary: the inputs' ``"dataset_name"``, at test time defaulting to
        MODEL.DATASEG.TEST.VOCABULARY_DATASET/_FILE/_CLASSES (or the first of DATASETS.TEST)."""
        default = None if self.training else (self.default_vocabulary or None)
        names = {x.get("dataset_name", default) for x in batched_inputs}
        if None in names:
            missing = [x.get("image_id") for x in batched_inputs if "dataset_name" not in x]
            if self.training:
                raise KeyError("DaTaSeg: every training input needs a 'dataset_name' key (the "
                               f"mappers add it); image_ids without it: {missing}")
            raise KeyError("DaTaSeg: inputs without 'dataset_name' (image_ids "
                           f"{missing}) need a default vocabulary: set "
                           "MODEL.DATASEG.TEST.VOCABULARY_DATASET (or DATASETS.TEST) to a "
                           "registered dataset name, MODEL.DATASEG.TEST.VOCABULARY_FILE or "
                           "_CLASSES to a vocabulary, or give each input a 'dataset_name'")
        if len(names) != 1:
            raise ValueError(f"DaTaSeg: a batch must come from one dataset, got {sorted(names)}")
        return names.pop()

    def batch_task(self, batched_inputs: List[dict], name: str) -> str:
        if not self.training and self.test_task:
            return self.test_task
        tasks = {x.get("task") for x in batched_inputs}
        if None in tasks:
            tasks.discard(None)
            tasks.add(self.default_task(name))
        if len(tasks) != 1:
            raise ValueError(f"DaTaSeg: batch of '{name}' mixes tasks {sorted(tasks)}")
        task = tasks.pop()
        if task not in TASKS:
            raise ValueError(f"DaTaSeg: input task {task!r} of '{name}' not one of {TASKS}")
        return task

    def default_task(self, name: str) -> str:
        """Task of inputs of vocabulary ``name`` that carry no "task": the one given to
        ``set_vocabulary``, else the registered dataset's, else "panoptic"."""
        task = self.vocabulary.task(name)
        if task:
            return task
        if name in self.vocabulary and name not in MetadataCatalog.list():
            return "panoptic"  # a run-time vocabulary: panoptic gives sem_seg too
        return get_dataset_info(name).task

    def preprocess(self, batched_inputs: List[dict]) -> ImageList:
        return preprocess_images([x["image"] for x in batched_inputs], self.pixel_mean,
                                 self.pixel_std, self.size_divisibility)

    def network(self, images: torch.Tensor, text_embed: torch.Tensor,
                dataset: Optional[str] = None):
        """Inference network, pure tensors (what an exported graph contains).

        Args:
            images: (B, 3, Hp, Wp) normalised, zero-padded images (``preprocess_images``).
            text_embed: (K, D) L2-normalised text embeddings of the vocabulary.
            dataset: the vocabulary's dataset name; used only by dataset-specific modules
                (``MODEL.DATASEG.DATASET_SPECIFIC``, paper Table 5), which pick their copy by it.
        Returns (pred_logits (B, Q, K+1), pred_masks (B, Q, Hp/4, Wp/4)) of the last decoder
        layer, before MERGE.
        """
        features = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder(features)
        dec = self.transformer_decoder(multi_scale, mask_features, return_aux=False,
                                       dataset=dataset)
        return (self.classifier(dec["class_embeds"], text_embed, dataset=dataset),
                dec["pred_masks"])

    def prepare_targets(self, batched_inputs, images: ImageList, task: str, name: str,
                        num_classes: int) -> List[Dict[str, torch.Tensor]]:
        """Per image: "labels" and padded "masks" (T,Hp,Wp), or "boxes" normalised (box task).

        Built on the host, where the loader leaves them, and moved to the device in one copy
        per kind for the whole batch (pinned, asynchronous on CUDA): each image's targets are
        views of those."""
        hp, wp = images.tensor.shape[-2:]
        labels, masks, boxes = [], [], []
        for x in batched_inputs:
            if "instances" not in x:
                raise KeyError(f"DaTaSeg: training input {x.get('image_id')} of '{name}' has "
                               "no 'instances'")
            inst = x["instances"]
            cls = inst.gt_classes.long()
            if len(cls) and (int(cls.min()) < 0 or int(cls.max()) >= num_classes):
                raise ValueError(f"DaTaSeg: image {x.get('image_id')} of '{name}' has class ids "
                                 f"{cls.unique().tolist()} outside [0, {num_classes})")
            labels.append(cls)
            if task == "box":
                scale = torch.tensor([wp, hp, wp, hp], dtype=torch.float32,
                                     device=inst.gt_boxes.tensor.device)
                boxes.append(inst.gt_boxes.tensor.float() / scale)
            else:
                if not inst.has("gt_masks"):
                    raise KeyError(f"DaTaSeg: image {x.get('image_id')} of '{name}' ({task}) "
                                   "has no gt_masks")
                m = inst.gt_masks
                m = getattr(m, "tensor", m)
                padded = torch.zeros((len(cls), hp, wp), dtype=torch.bool, device=m.device)
                padded[:, :m.shape[1], :m.shape[2]] = m
                masks.append(padded)
        counts = [len(c) for c in labels]
        out = {"labels": host_to_device(torch.cat(labels), self.device).split(counts)}
        if task == "box":
            out["boxes"] = host_to_device(torch.cat(boxes), self.device).split(counts)
        else:
            out["masks"] = host_to_device(torch.cat(masks), self.device).split(counts)
        return [{k: v[i] for k, v in out.items()} for i in range(len(batched_inputs))]

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        """Detectron2 inputs -> losses (training) or per-image results (eval).

        Each input: "image" (3, H, W) in cfg.INPUT.FORMAT; optional "height"/"width" (output
        size), "dataset_name" (vocabulary; default MODEL.DATASEG.TEST.VOCABULARY_* at test time),
        "task"; training inputs also "instances". Eval returns a list of dicts as
        ``postprocess_logits`` does.
        """
        name = self.batch_dataset_name(batched_inputs)
        task = self.batch_task(batched_inputs, name)
        images = self.preprocess(batched_inputs)
        if not self.training:
            text_embed, is_thing = self.vocabulary.get(name, self.device)
            logits, masks = self.network(images.tensor, text_embed, dataset=name)
            return self.inference_from_logits(logits, masks, batched_inputs, images, task,
                                              is_thing)
        features = self.backbone(images.tensor)
        mask_features, multi_scale = self.pixel_decoder(features)
        # every decoder layer's prediction stacked (S, B, ...), the last layer last: the
        # classifier, MERGE and the criterion each take all of them in one call
        dec = self.transformer_decoder(multi_scale, mask_features,
                                       return_aux="stacked" if self.deep_supervision else False,
                                       dataset=name)
        if not self.deep_supervision:
            dec = {k: v[None] for k, v in dec.items()}
        text_embed, is_thing = self.vocabulary.get(name, self.device)
        logits = self.classifier(dec["class_embeds"], text_embed, dataset=name)
        outputs = merge_predictions(logits, dec["pred_masks"],
                                    self._classes_to_merge(task, is_thing),
                                    eps=self.merge_eps, empty_logit=self.merge_empty_logit,
                                    check=False)
        targets = self.prepare_targets(batched_inputs, images, task, name, len(text_embed))
        return self.criterion(outputs, targets,
                              loss_scale=self.dataset_loss_weights.get(name, 1.0))

    def _classes_to_merge(self, task: str, is_thing: torch.Tensor) -> torch.Tensor:
        """``classes_to_merge`` of a vocabulary, computed once per (task, is_thing tensor):
        the stuff ids are a data-dependent selection (a device sync on a GPU)."""
        cache = self.__dict__.setdefault("_merge_classes_cache", {})
        hit = cache.get(task)
        if hit is None or hit[0] is not is_thing:
            hit = (is_thing, classes_to_merge(task, is_thing))
            cache[task] = hit
        return hit[1]

    def inference_from_logits(self, pred_logits, pred_masks, batched_inputs,
                              images: ImageList, task: str, is_thing: torch.Tensor) -> List[dict]:
        """``postprocess_logits`` with this model's settings; output sizes from the inputs'
        "height"/"width" (default: the network input size of each image)."""
        out_sizes = [(x.get("height", s[0]), x.get("width", s[1]))
                     for x, s in zip(batched_inputs, images.image_sizes)]
        return postprocess_logits(pred_logits, pred_masks, tuple(images.tensor.shape[-2:]),
                                  images.image_sizes, out_sizes, task, is_thing,
                                  **self.postprocess_settings())
