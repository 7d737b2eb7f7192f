"""DaTaSeg's Detectron2 trainer: multi-dataset loader, AdamW groups, evaluation table, resume.

Differences from ``DefaultTrainer`` and why:
- DistributedDataParallel gets ``device_ids`` only on GPUs, so multi-process training also
  runs on CPUs (gloo; see ``dataseg.engine.launch``).
- AMP (SOLVER.AMP.ENABLED) is used on GPUs only; on CPUs it is switched off with a warning.
- Checkpoints hold the optimizer state (Detectron2 0.6's DefaultTrainer leaves it out, so
  its resumed runs restart AdamW's moments) and RNG states; ``resume_or_load`` also
  fast-forwards the multi-dataset batch sampler to the resumed iteration, so a resumed run
  sees the same batches (the same images always; the same augmentations too with
  DATALOADER.NUM_WORKERS 0, since worker processes draw their own seeds).
- ``test`` evaluates every DATASETS.TEST entry through the evaluator table and prints one
  summary table; results are always keyed by dataset name.
- After training with several processes, every rank's weight checksum is compared
  (``rank_weight_checksums.json``): DDP replicas must end identical.
"""
import hashlib
import itertools
import json
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.utils.data import DataLoader

from dataseg.data.build import build_multi_dataset_train_loader, build_test_loader
from dataseg.data.loading import skipping_bad_records
from dataseg.engine.checkpoint import AtomicCheckpointer
from dataseg.engine.evaluation import build_evaluator, write_summary
from dataseg.engine.optimizer import build_lr_scheduler, build_optimizer
from dataseg.engine.preflight import preflight
from dataseg.modeling.backbone.vitdet import load_pretrained_vit
from dataseg.utils.atomic import atomic_write_bytes

__all__ = ["DaTaSegTrainer", "weights_checksum"]

logger = logging.getLogger("dataseg.trainer")


def weights_checksum(model) -> str:
    """SHA-256 over all parameters and buffers (names and exact bytes)."""
    model = model.module if hasattr(model, "module") else model
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _SkipBatches:
    """A batch sampler that starts ``start`` iterations into another (for resume)."""

    def __init__(self, batch_sampler, start):
        self.batch_sampler, self.start = batch_sampler, start

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.start, None)


class _WeightsSyncCheck(hooks.HookBase):
    def after_train(self):
        if comm.get_world_size() == 1:
            return
        checksums = comm.all_gather(weights_checksum(self.trainer.model))
        if comm.is_main_process():
            out = os.path.join(self.trainer.cfg.OUTPUT_DIR, "rank_weight_checksums.json")
            atomic_write_bytes(out, json.dumps(checksums, indent=1).encode())
            if len(set(checksums)) != 1:
                logger.error("ranks ended with different weights: %s", checksums)
            else:
                logger.info("all %d ranks ended with identical weights", len(checksums))


def _is_backbone_group(group) -> bool:
    return "backbone" in str(group.get("name", "")).split(".")


class _BaseAndBackboneLR(hooks.LRScheduler):
    """Detectron2's LRScheduler hook, logging the base lr as ``lr`` and the backbone's as
    ``lr_backbone`` (Detectron2's heuristic logs the most common lr: the backbone's, 0.1x)."""

    def before_train(self):
        super().before_train()
        base, backbone = self._lrs()
        logger.info("Learning rates: base %.5g, backbone %.5g (SOLVER.BACKBONE_MULTIPLIER %g)",
                    base, backbone if backbone is not None else float("nan"),
                    self.trainer.cfg.SOLVER.BACKBONE_MULTIPLIER)

    def _lrs(self):
        groups = self._optimizer.param_groups
        base = [g["lr"] for g in groups if not _is_backbone_group(g)]
        backbone = [g["lr"] for g in groups if _is_backbone_group(g)]
        return (max(base) if base else max(g["lr"] for g in groups),
                max(backbone) if backbone else None)

    def after_step(self):
        base, backbone = self._lrs()
        self.trainer.storage.put_scalar("lr", base, smoothing_hint=False)
        if backbone is not None:
            self.trainer.storage.put_scalar("lr_backbone", backbone, smoothing_hint=False)
        self.scheduler.step()


class DaTaSegTrainer(DefaultTrainer):
    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger(distributed_rank=comm.get_rank())
        if not logging.getLogger("dataseg").handlers:  # train_net.py sets it up with log.txt
            setup_logger(distributed_rank=comm.get_rank(), name="dataseg", abbrev_name="dataseg")
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # The train vocabularies are known now: embed them here, not in the first forward.
        model.vocabulary.preload(cfg.DATASETS.TRAIN)
        if cfg.DATASETS.PREFLIGHT:
            # The train sets were just loaded by the train loader; check the test sets too, so
            # an error in them stops the run now rather than after training.
            preflight(cfg, keys=("TEST",))
        on_gpu = next(model.parameters()).is_cuda
        model = create_ddp_model(model, broadcast_buffers=False,
                                 device_ids=[comm.get_local_rank()] if on_gpu else None)
        use_amp = cfg.SOLVER.AMP.ENABLED and on_gpu
        if cfg.SOLVER.AMP.ENABLED and not on_gpu:
            logger.warning("SOLVER.AMP.ENABLED is ignored on CPU (fp32 training)")
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR,
                                               trainer=weakref.proxy(self))
        self.start_iter = 0
        self.vit_load_report = None  # MODEL.VIT.WEIGHTS' load report (resume_or_load)
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg):
        if cfg.FLUSH_DENORMAL and not torch.set_flush_denormal(True):
            logger.info("FLUSH_DENORMAL: not supported on this CPU")
        model = build_model(cfg)
        logger.info("Model: %s with %.1fM parameters", type(model).__name__,
                    sum(p.numel() for p in model.parameters()) / 1e6)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_multi_dataset_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # evaluators such as SemSegEvaluator read the records (DatasetCatalog.get) when built:
        # with the same skip-bad-records setting as the test loader, so they see the same set
        with skipping_bad_records(cfg.DATASETS.SKIP_BAD_RECORDS):
            return build_evaluator(dataset_name, output_folder, distributed=True)

    def build_hooks(self):
        ret = [_BaseAndBackboneLR() if type(h) is hooks.LRScheduler else h
               for h in super().build_hooks()]
        return ret + [_WeightsSyncCheck()]

    # ---------------------------------------------------------------- resume
    def state_dict(self):
        """Detectron2 0.6's DefaultTrainer saves no optimizer state: add the inner trainer's."""
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("checkpoint has no optimizer state (saved by another trainer): "
                           "the optimizer starts afresh")

    def resume_or_load(self, resume=True):
        """Detectron2's, then, for a training that starts rather than resumes, the ViT's
        pretrained weights (MODEL.VIT.WEIGHTS) unless MODEL.WEIGHTS gave the trunk."""
        resuming = resume and self.checkpointer.has_checkpoint()
        self.checkpointer.missing_model_keys = None
        super().resume_or_load(resume=resume)
        self.vit_load_report = None if resuming else load_pretrained_vit(
            self.model, self.cfg.MODEL.VIT.WEIGHTS, self.checkpointer.missing_model_keys)
        if self.start_iter > 0:
            self._fast_forward_data(self.start_iter)

    def _fast_forward_data(self, start_iter):
        loader = self._trainer.data_loader
        if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
            logger.warning("train loader has no batch sampler to fast-forward: the resumed run "
                           "sees the data from the start of its stream")
            return
        resumed = DataLoader(
            loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, start_iter),
            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
            worker_init_fn=loader.worker_init_fn, pin_memory=loader.pin_memory)
        self._trainer.data_loader = resumed
        # Creating a DataLoader iterator draws a base seed from torch's global RNG; keep the
        # RNG state just restored from the checkpoint untouched by it.
        state = torch.get_rng_state()
        self._trainer._data_loader_iter = iter(resumed)
        torch.set_rng_state(state)
        logger.info("Resumed the training data stream at iteration %d", start_iter)

    # ------------------------------------------------------------- evaluation
    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluates every DATASETS.TEST set; returns {dataset_name: results}."""
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = (evaluators[idx] if evaluators is not None
                         else cls.build_evaluator(cfg, dataset_name))
            res = inference_on_dataset(model, data_loader, evaluator)
            results[dataset_name] = res
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(res)
        write_summary(results, cfg.TEST.SUMMARY_DIR or cfg.OUTPUT_DIR)
        return results


def torch_threads_from_env():
    """Honours DATASEG_NUM_THREADS for CPU runs (tests and the quickstart set it)."""
    n = os.environ.get("DATASEG_NUM_THREADS")
    if n:
        torch.set_num_threads(int(n))
