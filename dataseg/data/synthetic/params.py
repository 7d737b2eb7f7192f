"""Parameters of the synthetic world and where a world for them lives on disk.

The directory name is a fingerprint of everything that changes the files (not the root), so
different sizes/seeds coexist and a changed generator never reuses stale files.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# Bump when the generator's output changes for the same parameters.
GENERATOR_VERSION = 1
# World presets: "default", and "crowded": clusters of touching same-class things (instances
# that semantic labels alone cannot separate; see scene.py).
PRESETS = ("default", "crowded")
# Fallback for $DETECTRON2_DATASETS: the checkout's datasets/ folder (not the working directory).
_REPO_DATASETS = Path(__file__).resolve().parents[3] / "datasets"


@dataclass(frozen=True)
class SyntheticWorldParams:
    """Sizes, resolution and seed of the synthetic world (cfg.DATASETS.SYNTHETIC.*)."""

    root: str = ""
    seed: int = 0
    image_size: int = 128
    num_semantic_train: int = 60
    num_panoptic_train: int = 300
    num_box_train: int = 300
    num_val: int = 40
    preset: str = "default"

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"DATASETS.SYNTHETIC.PRESET must be one of {PRESETS}, got "
                             f"{self.preset!r}")
        if self.image_size < 32:
            raise ValueError(f"synthetic image_size must be >= 32, got {self.image_size}")
        for f in fields(self):
            if f.name.startswith("num_") and getattr(self, f.name) < 1:
                raise ValueError(f"synthetic {f.name} must be >= 1, got {getattr(self, f.name)}")

    @classmethod
    def from_cfg(cls, cfg) -> "SyntheticWorldParams":
        s = cfg.DATASETS.SYNTHETIC
        return cls(root=str(s.ROOT), seed=int(s.SEED), image_size=int(s.IMAGE_SIZE),
                   num_semantic_train=int(s.NUM_SEMANTIC_TRAIN),
                   num_panoptic_train=int(s.NUM_PANOPTIC_TRAIN),
                   num_box_train=int(s.NUM_BOX_TRAIN), num_val=int(s.NUM_VAL),
                   preset=str(s.PRESET))

    @classmethod
    def coerce(cls, params) -> "SyntheticWorldParams":
        """Accepts None (defaults), a SyntheticWorldParams or a Detectron2 cfg."""
        if params is None:
            return cls()
        if isinstance(params, cls):
            return params
        if hasattr(params, "DATASETS"):
            return cls.from_cfg(params)
        raise TypeError(f"expected SyntheticWorldParams or a Detectron2 cfg, got {type(params)}")

    def resolved_root(self) -> Path:
        if self.root:
            return Path(self.root).expanduser()
        base = os.environ.get("DETECTRON2_DATASETS")
        return (Path(base).expanduser() if base else _REPO_DATASETS) / "dataseg_synthetic"

    def fingerprint(self) -> str:
        content = {k: v for k, v in asdict(self).items() if k != "root"}
        if self.preset == "default":  # default worlds keep their fingerprint from before presets
            del content["preset"]
        content["generator_version"] = GENERATOR_VERSION
        digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
        tag = "" if self.preset == "default" else f"{self.preset}_"
        return f"{tag}s{self.seed}_r{self.image_size}_{digest}"

    def world_dir(self) -> Path:
        return self.resolved_root() / self.fingerprint()
