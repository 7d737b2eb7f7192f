"""Dataset-specific (D-S) modules of the paper's Table 5: which dataset's copy a batch uses.

DaTaSeg shares every parameter across datasets. Table 5 adds lightweight per-dataset modules
(queries, heads, text prompts) to show that this hurts. Each module here is a config switch
(``MODEL.DATASEG.DATASET_SPECIFIC``); the modules keep one copy per *owner* dataset (the
training datasets by default) and ``DatasetIndex`` maps a batch's ``dataset_name`` to its copy.
Datasets that own no copy (validation sets, new vocabularies) must be mapped to an owner in
``DATASET_SPECIFIC.TEST_MAP``; an unmapped one is a clear error, never a silent default.
"""
from typing import Dict, List, Optional, Sequence


class DatasetIndex:
    """name -> index of the dataset-specific copy that serves it."""

    def __init__(self, owners: Sequence[str], test_map: Optional[Dict[str, str]] = None):
        owners = [str(o) for o in owners]
        if not owners:
            raise ValueError("MODEL.DATASEG.DATASET_SPECIFIC: no datasets own modules (set "
                             "DATASET_SPECIFIC.DATASETS or DATASETS.TRAIN)")
        if len(set(owners)) != len(owners):
            raise ValueError(f"MODEL.DATASEG.DATASET_SPECIFIC.DATASETS has duplicates: {owners}")
        self.owners = owners
        self.test_map = dict(test_map or {})
        for test, owner in self.test_map.items():
            if owner not in owners:
                raise ValueError(f"MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP maps '{test}' to "
                                 f"'{owner}', which owns no modules (owners: {owners})")

    def __len__(self) -> int:
        return len(self.owners)

    def __call__(self, name: Optional[str]) -> int:
        if name in self.owners:
            return self.owners.index(name)
        if name in self.test_map:
            return self.owners.index(self.test_map[name])
        raise KeyError(f"dataset-specific modules: dataset '{name}' owns none and is not in "
                       f"MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP (owners: {self.owners}); add "
                       f"'{name}:<owner>' there")

    def names(self) -> List[str]:
        """Every dataset name this index serves: the owners, then the TEST_MAP entries."""
        return self.owners + [t for t in self.test_map if t not in self.owners]

    def owner(self, name: str) -> str:
        """The owner whose copy serves ``name`` (KeyError as ``__call__``)."""
        return self.owners[self(name)]

    def require(self, name: Optional[str], option: str = "--dataset") -> str:
        """``name``'s owner, for one fixed choice of copies (an export): a one-line
        ValueError naming ``option`` and listing the datasets when ``name`` is None or
        served by no copy."""
        listed = ", ".join(self.names())
        if name is None:
            raise ValueError("this model has dataset-specific modules "
                             "(MODEL.DATASEG.DATASET_SPECIFIC): give " + option + " NAME, the "
                             f"dataset whose modules to use; the model's datasets: {listed}")
        if name not in self.owners and name not in self.test_map:
            raise ValueError(f"{option} '{name}': no dataset-specific modules serve it (it "
                             "owns none and is not in MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP); "
                             f"the model's datasets: {listed}")
        return self.owner(name)

    def serve(self, name: str, owner: str) -> None:
        """Lets ``name`` (e.g. a vocabulary chosen at run time) use ``owner``'s copies."""
        if owner not in self.owners:
            raise ValueError(f"'{owner}' owns no dataset-specific modules (owners: "
                             f"{self.owners})")
        self.test_map[name] = owner

    @classmethod
    def from_cfg(cls, cfg) -> "DatasetIndex":
        d = cfg.MODEL.DATASEG.DATASET_SPECIFIC
        owners = list(d.DATASETS) or list(cfg.DATASETS.TRAIN)
        test_map = {}
        for entry in d.TEST_MAP:
            test, sep, owner = str(entry).partition(":")
            if not sep or not test or not owner:
                raise ValueError(f"MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP entry {entry!r}: "
                                 "expected 'test_dataset:owner_dataset'")
            test_map[test] = owner
        return cls(owners, test_map)


def uses_dataset_specific(cfg) -> bool:
    d = cfg.MODEL.DATASEG.DATASET_SPECIFIC
    return bool(d.QUERIES or d.HEADS or int(d.PROMPT_TOKENS) > 0)


def serve_with(model, name: str, dataset: Optional[str],
               option: str = "modules_from") -> None:
    """Makes every dataset-specific module of ``model`` serve ``name`` (a vocabulary the model
    does not know, e.g. one typed at run time) with the copies that serve ``dataset``. A model
    without such modules needs nothing: ``dataset`` is ignored. With them, ``dataset`` must be
    given and served (one-line ValueError naming ``option`` and listing the choices)."""
    indexes = _model_dataset_indexes(model)
    if not indexes:
        return
    if dataset is None and (name in indexes[0].owners or name in indexes[0].test_map):
        return  # already served (a training set or a TEST_MAP entry)
    owner = indexes[0].require(dataset, option)
    for index in indexes:
        index.serve(name, owner)


def _model_dataset_indexes(model) -> List[DatasetIndex]:
    """Each distinct ``DatasetIndex`` of a model's dataset-specific modules (the decoder and
    the classifier hold one each), in module order."""
    found = {}
    for m in model.modules():
        index = getattr(m, "dataset_index", None)
        if isinstance(index, DatasetIndex):
            found.setdefault(id(index), index)
    return list(found.values())


def model_dataset_index(model) -> Optional[DatasetIndex]:
    """The ``DatasetIndex`` of a model's dataset-specific modules, None when it has none."""
    indexes = _model_dataset_indexes(model)
    return indexes[0] if indexes else None
