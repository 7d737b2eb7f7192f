"""The DaTaSeg meta-architecture: backbone -> pixel decoder -> masked-attention decoder ->
text-embedding classifier -> MERGE (per task) -> criterion (training) or per-task inference.

Each batch comes from one dataset (``"dataset_name"``); its vocabulary (frozen text embeddings
and thing flags) comes from a ``VocabularyBank``; the task is the input's ``"task"`` or the
dataset's metadata task (``cfg.MODEL.DATASEG.TEST.TASK`` overrides it at test time).
"""
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..config import per_train_dataset
from .criterion import SetCriterion
from .merge import merge_for_task
from .pixel_decoder import MSDeformAttnPixelDecoder
from .postprocessing import (
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from .text_classifier import TextEmbeddingClassifier
from .transformer_decoder import MaskedAttentionDecoder
from .vocabulary_bank import VocabularyBank

TASKS = ("semantic", "panoptic", "instance", "box")


def dataset_loss_weights_from_cfg(cfg) -> Dict[str, float]:
    """cfg.DATASETS.TRAIN_LOSS_WEIGHTS (one per DATASETS.TRAIN entry, empty = 1.0 each)."""
    weights = per_train_dataset(cfg, "TRAIN_LOSS_WEIGHTS", 1.0)
    return {n: float(w) for n, w in zip(cfg.DATASETS.TRAIN, weights)}


def text_dim_from_cfg(cfg) -> int:
    """CLASSIFIER.TEXT_DIM, or the text encoder's embedding size when it is 0."""
    if cfg.MODEL.DATASEG.CLASSIFIER.TEXT_DIM > 0:
        return int(cfg.MODEL.DATASEG.CLASSIFIER.TEXT_DIM)
    from dataseg.text import embedding_dim

    return int(embedding_dim(cfg.MODEL.TEXT_ENCODER.NAME, cfg.MODEL.TEXT_ENCODER.CLIP_MODEL))


@META_ARCH_REGISTRY.register()
class DaTaSeg(nn.Module):
    """Universal multi-dataset, multi-task segmentation model (DaTaSeg, paper section 3)."""

    @configurable
    def __init__(self, *, backbone: Backbone, pixel_decoder: nn.Module,
                 transformer_decoder: MaskedAttentionDecoder,
                 classifier: TextEmbeddingClassifier, criterion: SetCriterion,
                 vocabulary: Optional[VocabularyBank] = None, pixel_mean, pixel_std,
                 size_divisibility: int = 32, deep_supervision: bool = True,
                 merge_eps: float = 1e-6, merge_empty_logit: float = -100.0,
                 dataset_loss_weights: Optional[Dict[str, float]] = None,
                 test_task: str = "", object_mask_threshold: float = 0.8,
                 overlap_threshold: float = 0.8, instances_per_image: int = 100):
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
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.instances_per_image = instances_per_image

    @classmethod
    def from_config(cls, cfg):
        from dataseg.text import text_encoder_kwargs_from_cfg

        d = cfg.MODEL.DATASEG
        text_dim = text_dim_from_cfg(cfg)
        backbone = build_backbone(cfg)
        pixel_decoder = MSDeformAttnPixelDecoder(cfg, backbone.output_shape())
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "transformer_decoder": MaskedAttentionDecoder(
                cfg, in_channels=d.PIXEL_DECODER.CONVS_DIM, text_dim=text_dim),
            "classifier": TextEmbeddingClassifier(cfg, text_dim=text_dim),
            "criterion": SetCriterion(cfg),
            "vocabulary": VocabularyBank(text_encoder_kwargs_from_cfg(cfg), text_dim=text_dim),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": d.SIZE_DIVISIBILITY, "deep_supervision": d.DEEP_SUPERVISION,
            "merge_eps": d.MERGE_EPS, "merge_empty_logit": d.MERGE_EMPTY_LOGIT,
            "dataset_loss_weights": dataset_loss_weights_from_cfg(cfg),
            "test_task": d.TEST.TASK, "object_mask_threshold": d.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": d.TEST.OVERLAP_THRESHOLD,
            "instances_per_image": d.TEST.INSTANCES_PER_IMAGE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def set_vocabulary(self, name: str, embeddings: torch.Tensor, is_thing) -> None:
        """Uses these text embeddings (K, D) and thing flags (K,) for dataset ``name``."""
        self.vocabulary.set(name, embeddings, is_thing)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def batch_dataset_name(batched_inputs: List[dict]) -> str:
        names = {x.get("dataset_name") for x in batched_inputs}
        if None in names:
            missing = [x.get("image_id") for x in batched_inputs if "dataset_name" not in x]
            raise KeyError("DaTaSeg: every input needs a 'dataset_name' key (the mappers add "
                           f"it); image_ids without it: {missing}")
        if len(names) != 1:
            raise ValueError(f"DaTaSeg: a batch must come from one dataset, got {sorted(names)}")
        return names.pop()

    def batch_task(self, batched_inputs: List[dict], name: str) -> str:
        if not self.training and self.test_task:
            return self.test_task
        tasks = {x.get("task") for x in batched_inputs}
        if None in tasks:
            from dataseg.data.dataset_info import get_dataset_info

            tasks.discard(None)
            tasks.add(get_dataset_info(name).task)
        if len(tasks) != 1:
            raise ValueError(f"DaTaSeg: batch of '{name}' mixes tasks {sorted(tasks)}")
        task = tasks.pop()
        if task not in TASKS:
            raise ValueError(f"DaTaSeg: input task {task!r} of '{name}' not one of {TASKS}")
        return task

    def preprocess(self, batched_inputs: List[dict]) -> ImageList:
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, batched_inputs, images: ImageList, task: str, name: str,
                        num_classes: int) -> List[Dict[str, torch.Tensor]]:
        """Per image: "labels" and padded "masks" (T,Hp,Wp), or "boxes" normalised (box task)."""
        hp, wp = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            if "instances" not in x:
                raise KeyError(f"DaTaSeg: training input {x.get('image_id')} of '{name}' has "
                               "no 'instances'")
            inst = x["instances"].to(self.device)
            labels = inst.gt_classes.long()
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(f"DaTaSeg: image {x.get('image_id')} of '{name}' has class ids "
                                 f"{labels.unique().tolist()} outside [0, {num_classes})")
            target = {"labels": labels}
            if task == "box":
                scale = torch.tensor([wp, hp, wp, hp], dtype=torch.float32, device=self.device)
                target["boxes"] = inst.gt_boxes.tensor.float() / scale
            else:
                if not inst.has("gt_masks"):
                    raise KeyError(f"DaTaSeg: image {x.get('image_id')} of '{name}' ({task}) "
                                   "has no gt_masks")
                m = inst.gt_masks
                m = getattr(m, "tensor", m)
                padded = torch.zeros((len(labels), hp, wp), dtype=torch.bool, device=self.device)
                padded[:, :m.shape[1], :m.shape[2]] = m
                target["masks"] = padded
            targets.append(target)
        return targets

    def _merge(self, logits, masks, task, is_thing):
        return merge_for_task(logits, masks, task, is_thing, self.merge_eps,
                              self.merge_empty_logit)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        name = self.batch_dataset_name(batched_inputs)
        task = self.batch_task(batched_inputs, name)
        images = self.preprocess(batched_inputs)
        features = self.backbone(images.tensor)
        mask_features, multi_scale = self.pixel_decoder(features)
        want_aux = self.training and self.deep_supervision
        dec = self.transformer_decoder(multi_scale, mask_features, return_aux=want_aux,
                                       dataset=name)
        text_embed, is_thing = self.vocabulary.get(name, self.device)
        logits = self.classifier(dec["class_embeds"], text_embed, dataset=name)
        outputs = self._merge(logits, dec["pred_masks"], task, is_thing)

        if self.training:
            outputs["aux_outputs"] = [
                self._merge(self.classifier(a["class_embeds"], text_embed, name), a["pred_masks"],
                            task, is_thing) for a in dec.get("aux_outputs", [])]
            targets = self.prepare_targets(batched_inputs, images, task, name, len(text_embed))
            return self.criterion(outputs, targets,
                                  loss_scale=self.dataset_loss_weights.get(name, 1.0))
        return self.inference(outputs, batched_inputs, images, task, is_thing)

    def inference(self, outputs, batched_inputs, images: ImageList, task: str,
                  is_thing: torch.Tensor) -> List[dict]:
        results = []
        padded = tuple(images.tensor.shape[-2:])
        for i, x in enumerate(batched_inputs):
            valid = outputs["valid"][i].clone()
            # empty merged entries (mask -100, logits 0) add nothing to any task's output
            m = outputs["num_merged"]
            valid[:m] &= outputs["counts"][i] > 0
            cls = outputs["pred_logits"][i][valid]
            image_size = images.image_sizes[i]
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            masks = resize_mask_logits(outputs["pred_masks"][i][valid], padded, image_size,
                                       out_size)
            if task == "semantic":
                results.append({"sem_seg": semantic_inference(cls, masks)})
            elif task == "panoptic":
                results.append({
                    "panoptic_seg": panoptic_inference(cls, masks, is_thing,
                                                       self.object_mask_threshold,
                                                       self.overlap_threshold),
                    "sem_seg": semantic_inference(cls, masks)})
            else:
                results.append({"instances": instance_inference(
                    cls, masks, self.instances_per_image, is_thing)})
        return results
