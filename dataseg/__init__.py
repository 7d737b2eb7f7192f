"""DaTaSeg for Detectron2: one model for semantic, panoptic and instance segmentation
trained on many datasets at once.

Importing ``dataseg`` registers what the project adds to Detectron2: the ``DaTaSeg``
meta-architecture and its backbones in the model registries, and the builtin datasets in
``DatasetCatalog``/``MetadataCatalog``. Nothing is downloaded or written at import.
"""

__version__ = "0.1.0"
