"""Detectron2's private attributes are touched in one module only, and that module works on the
installed Detectron2 (CI runs this file on both stacks: Detectron2 main and v0.6)."""
import ast
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import COCOEvaluator
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dataseg.engine import d2compat

REPO = Path(__file__).resolve().parents[2]
COMPAT = REPO / "dataseg" / "engine" / "d2compat.py"
# Named in issue 20 as where the project reached into Detectron2; checked even where the
# installed Detectron2 version lacks one of them.
KNOWN = {"_trainer", "_optimizer", "_data_loader_iter", "_LOCAL_PROCESS_GROUP", "_load_model",
         "_convert_ndarray_to_tensor", "_load_file", "_metadata", "_coco_api",
         "_fallback_candidates", "_get_pad"}


# torch's, not Detectron2's: torch.Tensor._version (autograd's in-place version counter, read
# by dataseg/modeling/frozen_bn.py to know when a frozen buffer changed), a name Detectron2's
# FrozenBatchNorm2d also uses for its state-dict version
TORCH_NAMES = {"_version"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in TORCH_NAMES


def detectron2_private_names():
    """Every ``_name`` Detectron2 and fvcore define: attributes set on ``self``/``cls``, methods
    and functions, module globals."""
    names = set(KNOWN)
    for pkg in ("detectron2", "fvcore"):
        root = Path(importlib.import_module(pkg).__file__).parent
        for path in root.rglob("*.py"):
            try:
                tree = ast.parse(path.read_text())
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and node.value.id in ("self", "cls")):
                    name = node.attr
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = node.name
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    name = node.id
                else:
                    continue
                if _private(name):
                    names.add(name)
    return names


def _detectron2_bound_names(tree):
    """Names a module binds from detectron2/fvcore imports (classes, modules such as ``T``)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "detectron2", "fvcore"):
            bound.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("detectron2", "fvcore"):
                    bound.add((a.asname or a.name).split(".")[0])
    return bound


def _base_root(base):
    while isinstance(base, ast.Attribute):
        base = base.value
    return base.id if isinstance(base, ast.Name) else None


def private_uses(path: Path, private_names):
    """(line, text) of each read, write or override of a Detectron2 private name in ``path``:
    ``obj._name`` for any object but ``self``/``cls``, and ``self._name`` or ``def _name``
    inside a class derived (in this file) from a Detectron2/fvcore class."""
    tree = ast.parse(path.read_text())
    d2_names = _detectron2_bound_names(tree)
    d2_classes = set()
    changed = True
    while changed:  # classes deriving from Detectron2's, directly or through this file's
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name not in d2_classes and any(
                    _base_root(b) in d2_names | d2_classes for b in node.bases):
                d2_classes.add(node.name)
                changed = True
    found = []

    def visit(node, in_d2_class):
        if isinstance(node, ast.ClassDef):
            in_d2_class = node.name in d2_classes
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and in_d2_class \
                        and item.name in private_names:
                    found.append((item.lineno, f"def {node.name}.{item.name}"))
        if isinstance(node, ast.Attribute) and node.attr in private_names:
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls") or in_d2_class:
                found.append((node.lineno, ast.unparse(node)))
        for child in ast.iter_child_nodes(node):
            visit(child, in_d2_class)

    visit(tree, False)
    return found


def project_files():
    files = [REPO / "train_net.py"]
    for folder in ("dataseg", "demo", "tools", "benchmarks", "datasets"):
        files += sorted((REPO / folder).rglob("*.py"))
    return [f for f in files if f != COMPAT and ".venv" not in f.parts]


def test_no_private_detectron2_attribute_outside_the_compat_module():
    names = detectron2_private_names()
    assert KNOWN <= names and len(names) > 100
    offences = [f"{path.relative_to(REPO)}:{line}: {text}"
                for path in project_files() for line, text in private_uses(path, names)]
    assert not offences, "\n".join(offences)


def test_the_private_use_check_finds_each_kind(tmp_path):
    """The check above catches a read, a write, and an override of a Detectron2 private."""
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        from detectron2.engine import DefaultTrainer
        from detectron2.utils import comm
        from detectron2.checkpoint import DetectionCheckpointer

        class T(DefaultTrainer):
            def f(self):
                return self._trainer.data_loader

        class C(DetectionCheckpointer):
            def _load_file(self, f):
                return {}

        class Mine:
            def g(self):
                self._trainer = 1   # our own class: allowed

        comm._LOCAL_PROCESS_GROUP = None
    """))
    found = [text for _, text in private_uses(bad, detectron2_private_names())]
    assert found == ["self._trainer", "def C._load_file", "comm._LOCAL_PROCESS_GROUP"], found


class _Echo(torch.nn.Module):
    """A 'model' whose loss is its weight times the batch's number: records the batches."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, batch):
        self.seen.append(batch)
        return {"loss": self.w * float(batch)}


def test_restart_data_iterator_takes_the_next_batch_from_the_new_loader():
    model = _Echo()
    trainer = SimpleTrainer(model, [1, 2, 3], torch.optim.SGD(model.parameters(), lr=0.0))
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        trainer.run_step()
        trainer.data_loader = [10, 20]
        d2compat.restart_data_iterator(trainer)
        trainer.run_step()
        trainer.run_step()
    assert model.seen == [1, 10, 20]


def test_create_local_process_group_gives_detectron2_the_local_rank(tmp_path):
    """One gloo process: Detectron2's comm helpers answer from the group made here."""
    script = textwrap.dedent(f"""
        import torch.distributed as dist
        from detectron2.utils import comm
        from dataseg.engine.d2compat import create_local_process_group
        dist.init_process_group("gloo", init_method="file://{tmp_path}/rdv", rank=0,
                                world_size=1)
        create_local_process_group(1)
        print(comm.get_local_rank(), comm.get_local_size(), comm.get_world_size())
        dist.destroy_process_group()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "1", "1"]


@pytest.fixture
def tiny_coco(tmp_path):
    """A registered dataset with a 3-image instance json (for COCOEvaluator)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from bench_coco_eval import make_sets
    finally:
        sys.path.pop(0)
    gt, dets = make_sets(30, 300, seed=1)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    name = f"d2compat_tiny_{os.getpid()}"
    MetadataCatalog.get(name).set(json_file=str(path), thing_classes=[c["name"] for c in
                                                                      gt["categories"]],
                                  thing_dataset_id_to_contiguous_id={
                                      c["id"]: i for i, c in enumerate(gt["categories"])})
    yield name, str(path), gt, dets
    MetadataCatalog.remove(name)


def test_evaluator_metadata_and_coco_api(tiny_coco, tmp_path):
    name, path, gt, _ = tiny_coco
    ev = COCOEvaluator(name, output_dir=str(tmp_path), use_fast_impl=False)
    api = d2compat.coco_evaluator_api(ev)
    assert isinstance(api, COCO) and len(api.dataset["annotations"]) == len(gt["annotations"])
    other = MetadataCatalog.get(name).as_dict()
    with d2compat.evaluator_metadata(ev, other) as same:
        assert same is ev and ev._metadata is other
    assert ev._metadata is MetadataCatalog.get(name)


@pytest.mark.skipif(not hasattr(d2compat, "FasterCOCOeval"), reason="faster-coco-eval missing")
def test_faster_coco_eval_gives_pycocotools_numbers(tiny_coco):
    _, path, _, dets = tiny_coco
    coco_gt = COCO(path)
    stats = {}
    for cls in (COCOeval, d2compat.FasterCOCOeval):
        for iou_type in ("segm", "bbox"):
            ev = cls(coco_gt, coco_gt.loadRes([dict(d) for d in dets]), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats[cls, iou_type] = np.asarray(ev.stats[:12])
            assert ev.eval["precision"].shape[:1] == (10,)  # what COCOEvaluator reads per class
    for iou_type in ("segm", "bbox"):
        ref = stats[COCOeval, iou_type]
        assert 0.05 < ref[0] < 0.95  # a set with real matches and misses
        np.testing.assert_allclose(stats[d2compat.FasterCOCOeval, iou_type], ref, atol=1e-6)


@pytest.mark.skipif(not hasattr(d2compat, "FasterCOCOeval"), reason="faster-coco-eval missing")
def test_detectron2_coco_evaluator_runs_faster_coco_eval(tiny_coco, tmp_path, monkeypatch):
    """Through Detectron2's COCOEvaluator (process + evaluate), use_fast_impl reports
    pycocotools' mask AP through faster-coco-eval, on either Detectron2 version."""
    from detectron2.evaluation import coco_evaluation
    from detectron2.structures import Boxes, Instances
    from pycocotools import mask as mask_util

    from dataseg.engine.evaluation import fast_coco_eval

    name, path, gt, dets = tiny_coco
    assert fast_coco_eval()
    # restored after the test (on the main stack Detectron2's own COCOeval_opt is the default)
    monkeypatch.setattr(coco_evaluation, "COCOeval_opt", coco_evaluation.COCOeval_opt)
    assert d2compat.use_faster_coco_eval()
    assert coco_evaluation.COCOeval_opt is d2compat.FasterCOCOeval
    to_contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    per_image = {}
    for d in dets:
        per_image.setdefault(d["image_id"], []).append(d)
    results = {}
    for fast in (False, True):
        ev = COCOEvaluator(name, tasks=("segm",), output_dir=str(tmp_path / str(fast)),
                           use_fast_impl=fast, distributed=False)
        ev.reset()
        for image in gt["images"]:
            ds = per_image.get(image["id"], [])
            inst = Instances((image["height"], image["width"]))
            masks = [mask_util.decode(dict(d["segmentation"], counts=d["segmentation"][
                "counts"].encode())) for d in ds]
            inst.pred_masks = torch.from_numpy(np.stack(masks).astype(bool)) if masks else \
                torch.zeros(0, image["height"], image["width"], dtype=torch.bool)
            inst.scores = torch.tensor([d["score"] for d in ds], dtype=torch.float32)
            inst.pred_classes = torch.tensor([to_contiguous[d["category_id"]] for d in ds],
                                             dtype=torch.int64)
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in ds)]
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            ev.process([{"image_id": image["id"]}], [{"instances": inst}])
        results[fast] = ev.evaluate()["segm"]
    coco_gt = COCO(path)
    ref = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in dets]), "segm")
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    assert results[True]["AP"] == pytest.approx(results[False]["AP"], abs=1e-4)
    assert results[True]["AP"] == pytest.approx(100 * ref.stats[0], abs=1e-2)
    for key, value in results[False].items():
        assert results[True][key] == pytest.approx(value, abs=1e-4, nan_ok=True), key
