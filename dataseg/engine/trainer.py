"""DaTaSeg's Detectron2 trainer: multi-dataset loader, AdamW groups, evaluation table, resume.

A ``TrainerBase`` subclass, as Detectron2 documents for trainers that differ from
``DefaultTrainer``: the same ``build_*`` class methods, hooks, ``resume_or_load``, ``train``
and ``test`` as ``DefaultTrainer`` (whose ``auto_scale_workers`` it uses), composed from public
pieces: a ``SimpleTrainer``/``AMPTrainer`` runs each step (``self.inner``). Differences from
``DefaultTrainer`` and why:
- DistributedDataParallel gets ``device_ids`` only on GPUs, so multi-process training also
  runs on CPUs (gloo; see ``dataseg.engine.launch``); ``DefaultTrainer.__init__`` always gives
  it ``device_ids``.
- AMP (SOLVER.AMP.ENABLED) is used on GPUs only; on CPUs it is switched off with a warning.
- Checkpoints hold the optimizer state (Detectron2 0.6's DefaultTrainer leaves it out, so
  its resumed runs restart AdamW's moments; main keeps it in the same place) and the RNG
  states of every rank (gathered before each periodic save), and are written atomically
  (:class:`AtomicCheckpointer`); ``resume_or_load`` also fast-forwards the multi-dataset batch
  sampler to the resumed iteration, so a resumed run sees the same batches (the same images
  always; the same augmentations too with DATALOADER.NUM_WORKERS 0, since worker processes
  draw their own seeds), and every rank logs which checkpoint and iteration it resumed from.
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
from detectron2.engine.defaults import create_ddp_model, default_writers
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.utils.data import DataLoader

from dataseg.data.build import build_multi_dataset_train_loader, build_test_loader
from dataseg.data.loading import skipping_bad_records
from dataseg.engine import d2compat
from dataseg.engine.checkpoint import AtomicCheckpointer, CheckpointError, rng_state
from dataseg.engine.evaluation import build_evaluator, write_summary
from dataseg.engine.optimizer import (
    build_lr_scheduler,
    build_optimizer,
    remap_per_parameter_state,
)
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
        # not after a failed or interrupted run: a collective with a rank gone would hang
        if comm.get_world_size() == 1 or self.trainer.iter + 1 < self.trainer.max_iter:
            return
        checksums = comm.all_gather(weights_checksum(self.trainer.model))
        if comm.is_main_process():
            out = os.path.join(self.trainer.cfg.OUTPUT_DIR, "rank_weight_checksums.json")
            atomic_write_bytes(out, json.dumps(checksums, indent=1).encode())
            if len(set(checksums)) != 1:
                logger.error("ranks ended with different weights: %s", checksums)
            else:
                logger.info("all %d ranks ended with identical weights", len(checksums))


class _GatherRankRngStates(hooks.HookBase):
    """On every rank, just before each save of Detectron2's ``PeriodicCheckpointer`` (same
    iterations: every ``period``-th and the last), gathers the ranks' RNG states for rank 0's
    checkpoint, so that each rank of a resumed run continues its own random streams (point
    sampling in the losses, augmentations)."""

    def __init__(self, checkpointer, period):
        self.checkpointer, self.period = checkpointer, period

    def after_step(self):
        it = self.trainer.iter
        if comm.get_world_size() > 1 and (
                (it + 1) % self.period == 0 or it >= self.trainer.max_iter - 1):
            self.checkpointer.rank_rng_states = (it, comm.all_gather(rng_state()))


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
        groups = self.trainer.optimizer.param_groups
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


class _StartedLoader:
    """A data loader whose first ``iter`` returns an iterator made beforehand."""

    def __init__(self, loader, iterator):
        self.loader, self.iterator = loader, iterator

    def __iter__(self):
        it, self.iterator = self.iterator, None
        return it if it is not None else iter(self.loader)


class DaTaSegTrainer(TrainerBase):
    """Trains a DaTaSeg model: ``DaTaSegTrainer(cfg)``, ``resume_or_load(resume)``, ``train()``;
    ``DaTaSegTrainer.test(cfg, model)`` evaluates. Attributes as ``DefaultTrainer``'s:
    ``model`` (DDP-wrapped with several processes), ``optimizer``, ``data_loader``,
    ``scheduler``, ``checkpointer``, ``cfg``, ``start_iter``, ``max_iter``; ``inner`` is the
    ``SimpleTrainer``/``AMPTrainer`` that runs each step."""

    def __init__(self, cfg):
        super().__init__()
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
        self.inner = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer.from_cfg(model, cfg, cfg.OUTPUT_DIR,
                                                        trainer=weakref.proxy(self))
        self.start_iter = 0
        self.vit_load_report = None  # MODEL.VIT.WEIGHTS' load report (resume_or_load)
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.last_eval_results = None
        self.register_hooks(self.build_hooks())

    # the inner trainer's objects, as DefaultTrainer exposes them
    @property
    def model(self):
        return self.inner.model

    @property
    def optimizer(self):
        return self.inner.optimizer

    @property
    def data_loader(self):
        return self.inner.data_loader

    def run_step(self):
        self.inner.iter = self.iter
        self.inner.run_step()

    def train(self):
        """Runs from ``start_iter`` to ``cfg.SOLVER.MAX_ITER``; returns the last evaluation's
        results (``TEST.EXPECTED_RESULTS`` checked as ``DefaultTrainer`` does)."""
        super().train(self.start_iter, self.max_iter)
        if self.cfg.TEST.EXPECTED_RESULTS and comm.is_main_process():
            from detectron2.evaluation.testing import verify_results

            verify_results(self.cfg, self.last_eval_results)
        return self.last_eval_results

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

    def build_writers(self):
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def build_hooks(self):
        """Detectron2's default training hooks (timer, lr schedule with the backbone's lr
        logged too, precise BN if asked, checkpoints, evaluation, writers) and the ranks'
        weight check."""
        cfg = self.cfg
        ret = [hooks.IterationTimer(), _BaseAndBackboneLR()]
        if cfg.TEST.PRECISE_BN.ENABLED:
            precise_cfg = cfg.clone()
            precise_cfg.defrost()
            precise_cfg.DATALOADER.NUM_WORKERS = 0
            ret.append(hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model,
                                       self.build_train_loader(precise_cfg),
                                       cfg.TEST.PRECISE_BN.NUM_ITER))
        ret.append(_GatherRankRngStates(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            self.last_eval_results = self.test(self.cfg, self.model)
            return self.last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret + [_WeightsSyncCheck()]

    # ---------------------------------------------------------------- resume
    def state_dict(self):
        """The iteration, the hooks' states (lr scheduler) and, under ``_trainer``, the inner
        trainer's (optimizer, AMP grad scaler): the layout of Detectron2 main's
        ``DefaultTrainer`` checkpoints."""
        ret = super().state_dict()
        ret["_trainer"] = self.inner.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        self._remap_per_parameter_groups(state_dict)
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self.inner.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("checkpoint has no optimizer state (saved by another trainer): "
                           "the optimizer starts afresh")

    def _remap_per_parameter_groups(self, state_dict):
        """A checkpoint written before issue 22 holds one optimizer group per parameter: its
        optimizer state becomes this optimizer's merged groups (``remap_per_parameter_state``)
        and the lr scheduler's per-group lists (``base_lrs``, ``_last_lr``) follow, each
        merged group taking its first parameter's (all its parameters had the same)."""
        inner = state_dict.get("_trainer")
        if not isinstance(inner, dict) or "optimizer" not in inner:
            return
        n_old = len(inner["optimizer"].get("param_groups", []))
        try:
            inner["optimizer"], group_map = remap_per_parameter_state(inner["optimizer"],
                                                                      self.optimizer)
        except ValueError as e:
            raise CheckpointError(f"cannot resume: {e}") from None
        if group_map is None:
            return
        for hook_state in state_dict.get("hooks", {}).values():
            if not isinstance(hook_state, dict):
                continue
            for key in ("base_lrs", "_last_lr"):
                values = hook_state.get(key)
                if isinstance(values, list) and len(values) == n_old:
                    hook_state[key] = [values[i] for i in group_map]
        logger.info("Resuming a checkpoint with one optimizer group per parameter (%d): its "
                    "state was mapped to %d merged groups", n_old, len(group_map))

    def resume_or_load(self, resume=True):
        """As ``DefaultTrainer``'s: with ``resume`` and a ``last_checkpoint`` in OUTPUT_DIR,
        continue from it (model, optimizer, scheduler, iteration, RNG states, data stream);
        otherwise load ``MODEL.WEIGHTS`` and start at iteration 0. Then, for a training that
        starts rather than resumes, the ViT's pretrained weights (MODEL.VIT.WEIGHTS) unless
        MODEL.WEIGHTS gave the trunk."""
        resuming = resume and self.checkpointer.has_checkpoint()
        source = self.checkpointer.get_checkpoint_file() if resuming else None
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resuming:
            # the checkpoint holds the iteration that had just finished
            self.start_iter = self.iter + 1
            logger.info("Rank %d resumed from checkpoint %s (iteration %d done): continuing at "
                        "iteration %d of %d", comm.get_rank(), source, self.iter,
                        self.start_iter, self.max_iter)
        elif resume:
            logger.info("Rank %d: --resume, but no last_checkpoint in %s: starting at "
                        "iteration 0 from MODEL.WEIGHTS %s", comm.get_rank(),
                        self.cfg.OUTPUT_DIR, self.cfg.MODEL.WEIGHTS or "(none: from scratch)")
        self.vit_load_report = None if resuming else load_pretrained_vit(
            self.model, self.cfg.MODEL.VIT.WEIGHTS, self.checkpointer.missing_model_keys)
        self._check_ranks_agree(source)
        if self.start_iter > 0:
            self._fast_forward_data(self.start_iter)

    def _check_ranks_agree(self, source):
        """Every rank must start at the same iteration: a machine that cannot see OUTPUT_DIR's
        checkpoints (not on a shared filesystem) would start afresh while the others resume."""
        if comm.get_world_size() == 1:
            return
        starts = comm.all_gather((self.start_iter, source))
        if len({s for s, _ in starts}) > 1:
            detail = ", ".join(f"rank {r} at iteration {s} ({src or 'no checkpoint'})"
                               for r, (s, src) in enumerate(starts))
            raise CheckpointError(
                f"the ranks do not resume from the same place: {detail}. Is OUTPUT_DIR "
                f"({self.cfg.OUTPUT_DIR}) on a filesystem that every machine shares?")

    def _fast_forward_data(self, start_iter):
        loader = self.inner.data_loader
        if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
            logger.warning("train loader has no batch sampler to fast-forward: the resumed run "
                           "sees the data from the start of its stream")
            return
        resumed = DataLoader(
            loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, start_iter),
            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
            worker_init_fn=loader.worker_init_fn, pin_memory=loader.pin_memory)
        # Making a DataLoader iterator draws a base seed from torch's global RNG: make it now,
        # keeping the RNG state just restored from the checkpoint as it was.
        state = torch.get_rng_state()
        started = _StartedLoader(resumed, iter(resumed))
        torch.set_rng_state(state)
        self.inner.data_loader = started
        d2compat.restart_data_iterator(self.inner)
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
