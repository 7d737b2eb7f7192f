"""Evaluation dispatch: a table from a dataset's ``evaluator_type`` to Detectron2's evaluators.

Each test set is evaluated with its own vocabulary and task post-processing: the model reads
both from the ``dataset_name`` of every input, so nothing here switches the model. Results of
all test sets are gathered into one summary table (printed, and written to
``eval_summary.json`` / ``eval_summary.md`` atomically).
"""
import itertools
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    SemSegEvaluator,
)
from detectron2.utils import comm

from dataseg.data.dataset_info import get_dataset_info
from dataseg.data.loading import as_ignore_region, is_maskless, skip_bad_records
from dataseg.engine.d2compat import coco_evaluator_api, evaluator_metadata, use_faster_coco_eval
from dataseg.utils.atomic import atomic_write_bytes

__all__ = ["EVALUATOR_TABLE", "IgnoreRegionCOCOEvaluator", "LoadedImagesPanopticEvaluator",
           "build_evaluator", "summarize_results", "missing_metrics", "format_summary",
           "write_summary", "detectron2_has_compiled_ops", "fast_coco_eval", "HEADLINE_METRICS"]

logger = logging.getLogger(__name__)


def detectron2_has_compiled_ops() -> bool:
    """False for the detectron2 v0.6 PyPI sources installed without ``_C`` (see docs/INSTALL.md)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "DATASEG_STUB", False)


def _sem_seg(name, output_dir, distributed):
    return SemSegEvaluator(name, distributed=distributed, output_dir=output_dir)


class _WithPanopticJson:
    """A dataset's metadata with another ``panoptic_json`` (everything else read through)."""

    def __init__(self, metadata, panoptic_json: str):
        self._base, self.panoptic_json = metadata, panoptic_json

    def __getattr__(self, key):
        return getattr(self._base, key)


class LoadedImagesPanopticEvaluator(COCOPanopticEvaluator):
    """COCOPanopticEvaluator that, when bad records are skipped (``skip_bad_records``, from
    cfg.DATASETS.SKIP_BAD_RECORDS), scores the images that loaded and says how many did not.

    panopticapi's ``pq_compute`` stops at the first ground-truth image without a prediction,
    which is what a record skipped by the loader or the mapper leaves. Here the images that
    reached ``process`` are gathered, the ground-truth json is cut down to them (a temporary
    file), one warning gives the count, and the results get a group ``"images"``:
    ``{"evaluated", "skipped", "total"}``. Without skipping it is Detectron2's evaluator as is.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None,
                 skip_bad_records: bool = False):
        super().__init__(dataset_name, output_dir=output_dir)
        self.dataset_name, self.skip_bad_records = dataset_name, bool(skip_bad_records)
        self._image_ids: List = []

    def reset(self):
        super().reset()
        self._image_ids = []

    def process(self, inputs, outputs):
        self._image_ids.extend(inp["image_id"] for inp in inputs)
        super().process(inputs, outputs)

    def evaluate(self):
        if not self.skip_bad_records:
            return super().evaluate()
        seen = set(itertools.chain(*comm.gather(self._image_ids)))  # empty off the main rank
        if not comm.is_main_process():
            return super().evaluate()  # hands this rank's predictions to the main one
        metadata = MetadataCatalog.get(self.dataset_name)
        with open(metadata.panoptic_json) as f:
            gt = json.load(f)
        total = len(gt["annotations"])
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in seen]
        images = {"evaluated": len(gt["annotations"]), "skipped": total - len(gt["annotations"]),
                  "total": total}
        if not images["skipped"]:
            return OrderedDict(super().evaluate(), images=images)
        logger.warning("dataset '%s': panoptic evaluation over %d of %d images, %d skipped as "
                       "bad records (see the warnings above)", self.dataset_name,
                       images["evaluated"], total, images["skipped"])
        gt["images"] = [im for im in gt.get("images", []) if im["id"] in seen]
        # Detectron2 takes the ground-truth json from the evaluator's metadata and offers no
        # argument for it: a view of that metadata with the cut-down json stands in for the call.
        with tempfile.TemporaryDirectory(prefix="dataseg_panoptic_gt") as tmp:
            path = os.path.join(tmp, os.path.basename(metadata.panoptic_json))
            with open(path, "w") as f:
                json.dump(gt, f)
            with evaluator_metadata(self, _WithPanopticJson(metadata, path)):
                results = super().evaluate()
        return OrderedDict(results, images=images)


def _panoptic(name, output_dir, distributed):
    return LoadedImagesPanopticEvaluator(name, output_dir=output_dir,
                                         skip_bad_records=skip_bad_records())


class IgnoreRegionCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator for instance jsons with mask-less annotations (no/empty ``segmentation``
    or ``ignore``): they are scored as ignore regions (``iscrowd`` 1, box as the region), the
    rule the instance loader applies (dataseg.data.loading.as_ignore_region). pycocotools
    would otherwise fail on them, after the whole inference pass."""

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        # Detectron2 exposes no hook to adjust the ground truth it loads; the COCO api object
        # holds the annotation dicts (shared by .dataset and .anns), rewritten in place.
        api = coco_evaluator_api(self)
        count = 0
        for ann in api.dataset.get("annotations", []):
            if is_maskless(ann):
                ann.update(as_ignore_region(ann))
                ann.pop("ignore", None)
                count += 1
        if count:
            logger.info("dataset '%s': %d ground-truth annotations without a mask are ignore "
                        "regions in evaluation", dataset_name, count)


def _coco(name, output_dir, distributed):
    info = get_dataset_info(name)
    # Box-only datasets have no masks to score; everything else gets mask and box AP.
    tasks = ("bbox",) if info.task == "box" else ("bbox", "segm")
    return IgnoreRegionCOCOEvaluator(name, tasks=tasks, distributed=distributed,
                                     output_dir=output_dir, use_fast_impl=fast_coco_eval())


def fast_coco_eval() -> bool:
    """Whether COCO evaluation runs a C++ evaluator with pycocotools' numbers: Detectron2's
    ``COCOeval_opt`` where Detectron2 has its compiled ops (the main stack), else
    faster-coco-eval's (the legacy stack, ``requirements/base.txt``); pycocotools' Python one
    where neither is there. ``benchmarks/bench_coco_eval.py`` measures both against
    pycocotools: same AP, each 6-16x faster."""
    return detectron2_has_compiled_ops() or use_faster_coco_eval()


EVALUATOR_TABLE: Dict[str, Callable[[str, str, bool], DatasetEvaluator]] = {
    "sem_seg": _sem_seg,
    "coco_panoptic_seg": _panoptic,
    "coco": _coco,
}

# The number reported for each evaluator type in the summary (others are kept in the json).
HEADLINE_METRICS = {
    "sem_seg": [("sem_seg", "mIoU")],
    "coco_panoptic_seg": [("panoptic_seg", "PQ"), ("panoptic_seg", "PQ_th"),
                          ("panoptic_seg", "PQ_st")],
    "coco": [("segm", "AP"), ("bbox", "AP")],
}


def build_evaluator(dataset_name, output_dir=None, distributed=True) -> DatasetEvaluator:
    info = get_dataset_info(dataset_name)
    if info.evaluator_type is None:
        raise ValueError(f"dataset '{dataset_name}' has no evaluator_type (a training-only set); "
                         "remove it from DATASETS.TEST")
    factory = EVALUATOR_TABLE.get(info.evaluator_type)
    if factory is None:
        raise KeyError(f"dataset '{dataset_name}': no evaluator for evaluator_type "
                       f"'{info.evaluator_type}' (known: {sorted(EVALUATOR_TABLE)})")
    return factory(dataset_name, output_dir, distributed)


def summarize_results(results: Dict[str, Dict]) -> List[Dict]:
    """Rows (dataset, task, metric, value) of the headline metrics each evaluated dataset
    reported, in the order of ``results`` and of ``HEADLINE_METRICS``."""
    rows = []
    for dataset_name, res in results.items():
        info = get_dataset_info(dataset_name)
        for group, metric in HEADLINE_METRICS.get(info.evaluator_type, []):
            if group in (res or {}) and metric in res[group]:
                rows.append({"dataset": dataset_name, "task": info.task,
                             "metric": f"{group}/{metric}", "value": float(res[group][metric])})
    return rows


def missing_metrics(results: Dict[str, Dict]) -> List[Dict]:
    """The headline metrics an evaluator did not report (e.g. COCOEvaluator's ``{}`` when a
    set got no predictions): rows (dataset, task, metric) without a value."""
    return [{"dataset": name, "task": get_dataset_info(name).task, "metric": f"{g}/{m}"}
            for name, res in results.items()
            for g, m in HEADLINE_METRICS.get(get_dataset_info(name).evaluator_type, [])
            if not (g in (res or {}) and m in res[g])]


def _skipped_images(results: Dict[str, Dict]) -> List[str]:
    return [f"{name}: evaluated {im['evaluated']} of {im['total']} images ({im['skipped']} "
            "skipped as bad records)"
            for name, res in results.items()
            for im in [(res or {}).get("images") or {}] if im.get("skipped")]


def format_summary(rows: List[Dict], missing: Sequence[Dict] = (),
                   notes: Sequence[str] = ()) -> str:
    """The markdown table of ``rows`` (values with 2 decimals, ``nan`` for NaN), then one
    ``not reported`` row per ``missing`` metric, then the ``notes`` as lines."""
    lines = ["| dataset | task | metric | value |", "|---|---|---|---|"]
    for r in rows:
        value = "nan" if math.isnan(r["value"]) else f"{r['value']:.2f}"
        lines.append(f"| {r['dataset']} | {r['task']} | {r['metric']} | {value} |")
    for r in missing:
        lines.append(f"| {r['dataset']} | {r['task']} | {r['metric']} | not reported |")
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines)


def _nan_to_none(obj):
    """NaN and infinities become ``None`` (``null``): strict JSON readers reject ``NaN``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return type(obj)((k, _nan_to_none(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_summary(results: Dict[str, Dict], output_dir: str) -> List[Dict]:
    """Prints the summary table and writes ``eval_summary.json`` (``rows``, ``missing``,
    ``results``: every group each evaluator returned; strict JSON, NaN written as ``null``)
    and ``eval_summary.md`` (the table) to output_dir, atomically (main process only).
    Returns the rows."""
    rows = summarize_results(results)
    if not comm.is_main_process():
        return rows
    missing = missing_metrics(results)
    table = format_summary(rows, missing, _skipped_images(results))
    logger.info("Evaluation summary:\n%s", table)
    if not logging.getLogger("dataseg").handlers:  # no log set up (train_net.py sets one up)
        print("\nEvaluation summary\n" + table, flush=True)
    if output_dir:
        full = OrderedDict((k, {g: dict(v) for g, v in (r or {}).items()})
                           for k, r in results.items())
        summary = _nan_to_none({"rows": rows, "missing": missing, "results": full})
        atomic_write_bytes(os.path.join(output_dir, "eval_summary.json"), json.dumps(
            summary, indent=2, allow_nan=False).encode())
        atomic_write_bytes(os.path.join(output_dir, "eval_summary.md"), (table + "\n").encode())
    return rows
