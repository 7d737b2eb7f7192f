"""DaTaSeg for Detectron2: one model for semantic, panoptic and instance segmentation
trained on many datasets at once.

Importing ``dataseg`` registers what the project adds to Detectron2: the ``DaTaSeg``
meta-architecture and its backbones in the model registries, the builtin datasets (paths under
``$DETECTRON2_DATASETS``) and the embedded synthetic world in ``DatasetCatalog`` and
``MetadataCatalog``. Nothing is downloaded, generated or written at import.
"""

__version__ = "0.1.0"

from dataseg import modeling  # noqa: E402,F401  (META_ARCH_REGISTRY, BACKBONE_REGISTRY)
from dataseg.config import add_dataseg_config  # noqa: E402
from dataseg.data.builtin import register_all_builtin  # noqa: E402
from dataseg.data.synthetic import register_synthetic_world  # noqa: E402

register_all_builtin()
register_synthetic_world()

__all__ = ["add_dataseg_config", "register_all_builtin", "register_synthetic_world"]
