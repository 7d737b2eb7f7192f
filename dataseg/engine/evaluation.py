"""Evaluation dispatch: a table from a dataset's ``evaluator_type`` to Detectron2's evaluators.

Each test set is evaluated with its own vocabulary and task post-processing: the model reads
both from the ``dataset_name`` of every input, so nothing here switches the model. Results of
all test sets are gathered into one summary table (printed, and written to
``eval_summary.json`` / ``eval_summary.md`` atomically).
"""
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Callable, Dict, List

from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    SemSegEvaluator,
)
from detectron2.utils import comm

from dataseg.data.dataset_info import get_dataset_info
from dataseg.data.loading import as_ignore_region, is_maskless
from dataseg.utils.atomic import atomic_write_bytes

__all__ = ["EVALUATOR_TABLE", "IgnoreRegionCOCOEvaluator", "build_evaluator",
           "summarize_results", "format_summary", "detectron2_has_compiled_ops",
           "HEADLINE_METRICS"]

logger = logging.getLogger(__name__)


def detectron2_has_compiled_ops() -> bool:
    """False for the detectron2 v0.6 PyPI sources installed without ``_C`` (see README)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "DATASEG_STUB", False)


def _sem_seg(name, output_dir, distributed):
    return SemSegEvaluator(name, distributed=distributed, output_dir=output_dir)


def _panoptic(name, output_dir, distributed):
    return COCOPanopticEvaluator(name, output_dir=output_dir)


class IgnoreRegionCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator for instance jsons with mask-less annotations (no/empty ``segmentation``
    or ``ignore``): they are scored as ignore regions (``iscrowd`` 1, box as the region), the
    rule the instance loader applies (dataseg.data.loading.as_ignore_region). pycocotools
    would otherwise fail on them, after the whole inference pass."""

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        # Detectron2 exposes no hook to adjust the ground truth it loads; the COCO api object
        # holds the annotation dicts (shared by .dataset and .anns), rewritten in place.
        api = self._coco_api
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
                                     output_dir=output_dir,
                                     use_fast_impl=detectron2_has_compiled_ops())


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
    """Rows (dataset, task, metric, value) of the headline metrics of each evaluated dataset."""
    rows = []
    for dataset_name, res in results.items():
        info = get_dataset_info(dataset_name)
        for group, metric in HEADLINE_METRICS.get(info.evaluator_type, []):
            if group in res and metric in res[group]:
                rows.append({"dataset": dataset_name, "task": info.task,
                             "metric": f"{group}/{metric}", "value": float(res[group][metric])})
    return rows


def format_summary(rows: List[Dict]) -> str:
    lines = ["| dataset | task | metric | value |", "|---|---|---|---|"]
    for r in rows:
        value = "nan" if math.isnan(r["value"]) else f"{r['value']:.2f}"
        lines.append(f"| {r['dataset']} | {r['task']} | {r['metric']} | {value} |")
    return "\n".join(lines)


def write_summary(results: Dict[str, Dict], output_dir: str) -> List[Dict]:
    """Prints the summary table and writes it to output_dir (main process only)."""
    rows = summarize_results(results)
    if not comm.is_main_process():
        return rows
    table = format_summary(rows)
    logger.info("Evaluation summary:\n%s", table)
    if not logging.getLogger("dataseg").handlers:  # no log set up (train_net.py sets one up)
        print("\nEvaluation summary\n" + table, flush=True)
    if output_dir:
        full = OrderedDict((k, {g: dict(v) for g, v in r.items()}) for k, r in results.items())
        atomic_write_bytes(os.path.join(output_dir, "eval_summary.json"),
                           json.dumps({"rows": rows, "results": full}, indent=2).encode())
        atomic_write_bytes(os.path.join(output_dir, "eval_summary.md"), (table + "\n").encode())
    return rows
