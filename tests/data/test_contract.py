"""One home for the dataset contract: every module's task/evaluator/preset tables agree with it."""
import ast
from pathlib import Path

import pytest
from data_fixtures import write_semantic_dataset
from detectron2.data import MetadataCatalog

import dataseg.modeling
from dataseg import contract
from dataseg.data import augmentation, dataset_info, mappers
from dataseg.data.register import register_semantic_dataset
from dataseg.engine.evaluation import EVALUATOR_TABLE, HEADLINE_METRICS
from dataseg.modeling import merge, meta_arch


def test_one_home_for_tasks_evaluators_and_presets():
    assert contract.TASKS == ("semantic", "panoptic", "instance", "box")
    # the data layer and the model re-export the same objects, not copies
    assert dataset_info.TASKS is contract.TASKS and meta_arch.TASKS is contract.TASKS
    assert dataset_info.EVALUATOR_TYPES is contract.EVALUATOR_TYPES
    assert augmentation.PRESETS is contract.AUGMENTATION_PRESETS
    assert dataset_info.AUGMENTATION_PRESETS is contract.AUGMENTATION_PRESETS
    # per-task and per-evaluator tables cover exactly the contract
    assert set(merge.MERGE_CLASSES_PER_TASK) == set(contract.TASKS)
    assert set(mappers._TRAIN_MAPPERS) == set(contract.TASKS)
    named = {t for t in contract.EVALUATOR_TYPES if t is not None}
    assert set(EVALUATOR_TABLE) == named and set(HEADLINE_METRICS) == named


def test_dataset_info_carries_the_augmentation_preset(tmp_path, names):
    ds = write_semantic_dataset(tmp_path, n=1)
    names.append("t_contract_aug")
    register_semantic_dataset("t_contract_aug", ds["image_root"], ds["sem_seg_root"],
                              ds["class_names"], augmentation="none")
    assert dataset_info.get_dataset_info("t_contract_aug").augmentation == "none"
    meta = MetadataCatalog.get("t_contract_aug")
    del meta.augmentation  # no preset named: None, the config must name one
    assert dataset_info.get_dataset_info("t_contract_aug").augmentation is None
    meta.set(augmentation="jitter")  # not a preset
    with pytest.raises(KeyError, match="t_contract_aug.*'augmentation' 'jitter'"):
        dataset_info.get_dataset_info("t_contract_aug")


def test_register_rejects_an_unknown_preset(tmp_path, names):
    ds = write_semantic_dataset(tmp_path, n=1)
    with pytest.raises(ValueError, match="t_contract_bad.*augmentation 'jitter'"):
        register_semantic_dataset("t_contract_bad", ds["image_root"], ds["sem_seg_root"],
                                  ds["class_names"], augmentation="jitter")


def test_the_model_does_not_import_the_data_layer():
    # dataseg/modeling takes the contract from dataseg/contract.py, never from dataseg/data
    offenders = []
    for path in Path(dataseg.modeling.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                if mod.startswith(("dataseg.data", "..data")):
                    offenders.append(f"{path.name}: {mod}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: {a.name}" for a in node.names
                              if a.name.startswith("dataseg.data")]
    assert offenders == []
