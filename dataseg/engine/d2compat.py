"""The few places where DaTaSeg needs what Detectron2 offers no public way to do, on both versions.

Everything else in the project uses Detectron2's public API only (hooks, ``TrainerBase``
subclassing, the checkpointer's ``load``/``save``, evaluator arguments);
``tests/engine/test_d2compat.py`` pins that no other module reads or writes an attribute of a
Detectron2 object whose name starts with ``_``, and runs each function here on the installed
Detectron2 (CI runs it on both: main and v0.6).

Detectron2 versions: "main" is the commit that ``scripts/install.sh`` builds (see
``requirements/detectron2.txt``); "v0.6" the 2021 release's Python sources (the legacy stack).
"""
import contextlib

from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

__all__ = ["restart_data_iterator", "create_local_process_group", "evaluator_metadata",
           "coco_evaluator_api", "inner_trainer", "use_faster_coco_eval"]


def restart_data_iterator(trainer: SimpleTrainer) -> None:
    """Makes ``trainer`` (a ``SimpleTrainer``/``AMPTrainer``) take its next batch from
    ``iter(trainer.data_loader)``, a new iterator over its current loader.

    Detectron2 main has ``SimpleTrainer.reset_data_loader`` (it makes the iterator at the next
    step); v0.6 makes the iterator in ``__init__``, into ``_data_loader_iter``, with no method
    to make another.
    """
    loader = trainer.data_loader
    if hasattr(trainer, "reset_data_loader"):
        trainer.reset_data_loader(lambda: loader)
    else:
        trainer._data_loader_iter = iter(loader)


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Detectron2's per-machine process group, which ``comm.get_local_rank`` and
    ``comm.get_local_size`` read (every rank must call this, in the same order).

    Detectron2 main: ``comm.create_local_process_group``. v0.6 builds the group inside its own
    ``launch`` only, into the module global ``comm._LOCAL_PROCESS_GROUP``.
    """
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_workers_per_machine)
        return
    import torch.distributed as dist

    world_size = dist.get_world_size()
    machine = dist.get_rank() // num_workers_per_machine
    for m in range(world_size // num_workers_per_machine):
        ranks = list(range(m * num_workers_per_machine, (m + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if m == machine:
            comm._LOCAL_PROCESS_GROUP = group


@contextlib.contextmanager
def evaluator_metadata(evaluator, metadata):
    """Within the block, ``evaluator`` (a Detectron2 ``DatasetEvaluator``) reads ``metadata``
    in place of its dataset's ``MetadataCatalog`` entry (e.g. another ``panoptic_json``).

    Detectron2's evaluators take the metadata from the catalog in ``__init__`` and keep it in
    ``_metadata``, with no argument to give another (both versions).
    """
    saved = evaluator._metadata
    evaluator._metadata = metadata
    try:
        yield evaluator
    finally:
        evaluator._metadata = saved


def coco_evaluator_api(evaluator):
    """The pycocotools ``COCO`` object of ground truth a ``COCOEvaluator`` scores against (its
    ``dataset`` dict may be edited in place, e.g. to turn annotations into ignore regions).

    Detectron2 loads it in ``COCOEvaluator.__init__`` into ``_coco_api`` and has no argument
    for adjusting the ground truth (both versions).
    """
    return evaluator._coco_api


def inner_trainer(trainer):
    """The ``SimpleTrainer``/``AMPTrainer`` a Detectron2 ``DefaultTrainer`` runs its steps with
    (``DefaultTrainer._trainer`` on both versions); for code given a ``DefaultTrainer``.
    DaTaSeg's own trainer keeps its inner trainer public (``DaTaSegTrainer.inner``)."""
    return getattr(trainer, "inner", None) or trainer._trainer


try:  # faster-coco-eval: COCO evaluation in C++, for a Detectron2 without compiled ops
    from faster_coco_eval.core.faster_eval_api import COCOeval_faster as _COCOevalFaster
except ImportError:  # not installed
    _COCOevalFaster = None

if _COCOevalFaster is not None:
    class FasterCOCOeval(_COCOevalFaster):
        """faster-coco-eval's evaluator with pycocotools' ``COCOeval(cocoGt, cocoDt, iouType)``
        signature and its numbers (``benchmarks/bench_coco_eval.py`` compares them)."""

        def __init__(self, cocoGt=None, cocoDt=None, iouType="segm"):
            super().__init__(cocoGt, cocoDt, iouType, print_function=_quiet)


def _quiet(*args, **kwargs):
    pass


def use_faster_coco_eval() -> bool:
    """Makes Detectron2's ``COCOEvaluator(use_fast_impl=True)`` evaluate with faster-coco-eval,
    for a Detectron2 without compiled ops (its own ``COCOeval_opt`` needs them). Returns whether
    it could (faster-coco-eval installed).

    ``COCOEvaluator`` picks its evaluator class from the module name ``COCOeval_opt`` of
    ``detectron2.evaluation.coco_evaluation`` and takes no argument for another (both versions).
    """
    if _COCOevalFaster is None:
        return False
    from detectron2.evaluation import coco_evaluation

    coco_evaluation.COCOeval_opt = FasterCOCOeval
    return True
