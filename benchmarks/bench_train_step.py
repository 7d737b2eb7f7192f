"""Training-step time of DaTaSeg vs. HF transformers' Mask2Former with its own loss (CPU or GPU).

One step = forward + loss + backward + optimizer step (+ gradient clipping), fp32, on a batch
of ``--batch`` images of ``--size`` x ``--size`` with the same random semantic targets for both
models. Equal size, the quickstart's model scale: ResNet-18 backbones with random weights,
hidden 128, 32 queries, 4 heads, FFN 512, 2 deformable encoder layers (4 points, 3 levels,
FFN 512), 3 masked-attention decoder layers, mask dim 128, 2048 sampled points per mask,
auxiliary losses on every layer, 13 classes. DaTaSeg uses the project's optimizer
(``dataseg.engine.optimizer.build_optimizer`` with the default SOLVER keys: AdamW, no gradient
clipping); HF gets ``torch.optim.AdamW`` with torch's defaults. Nothing is downloaded.

Both models alternate step by step in one process (who goes first alternates too), so load
from other processes hits both alike; medians over ``--repeats`` after ``--warmup`` steps,
split into forward+loss, backward and optimizer phases.

    python benchmarks/bench_train_step.py [--threads 2] [--repeats 10]
    # on a GPU (DaTaSeg uses its CUDA deformable-attention kernel when built, HF its PyTorch path):
    python benchmarks/bench_train_step.py --device cuda --batch 16 --size 256 --repeats 30
    # the DaTaSeg of another checkout (e.g. before a change), against the same HF baseline:
    python benchmarks/bench_train_step.py --dataseg-root /path/to/other/checkout
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 13
TEXT_DIM = 384
QUERIES, HIDDEN, HEADS, FFN, ENC_LAYERS, DEC_LAYERS, POINTS = 32, 128, 4, 512, 2, 3, 2048


def make_targets(batch, size, seed=0):
    """Per image: a coarse random label map (4x4 cells, nearest-upsampled) -> (labels, masks)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        grid = torch.randint(0, NUM_CLASSES, (1, 1, 4, 4), generator=g).float()
        sem = torch.nn.functional.interpolate(grid, size=(size, size), mode="nearest")[0, 0]
        labels = sem.long().unique()
        out.append((labels, sem.long()[None] == labels[:, None, None]))
    return out


def build_ours(args, targets):
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Instances

    import dataseg.modeling  # noqa: F401  (registers DaTaSeg)
    from dataseg.config import add_dataseg_config
    from dataseg.engine.optimizer import build_optimizer

    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "Base-DaTaSeg.yaml"))
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"  # HF's ResNet trains its batch norms too
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    d = cfg.MODEL.DATASEG
    d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = QUERIES, HIDDEN, HEADS, FFN
    d.DEC_LAYERS, d.MASK_DIM, d.TRAIN_NUM_POINTS = DEC_LAYERS, HIDDEN, POINTS
    d.PIXEL_DECODER.CONVS_DIM, d.PIXEL_DECODER.ENC_LAYERS = HIDDEN, ENC_LAYERS
    d.PIXEL_DECODER.ENC_HEADS, d.PIXEL_DECODER.ENC_DIM_FEEDFORWARD = HEADS, FFN
    d.PIXEL_DECODER.DEFORM_ATTN_IMPL = "pytorch" if args.device == "cpu" else "auto"
    d.CLASSIFIER.TEXT_DIM = TEXT_DIM  # MiniLM size; random embeddings injected below
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.set_vocabulary("bench", torch.randn(NUM_CLASSES, TEXT_DIM, device=args.device),
                         [False] * NUM_CLASSES)
    optimizer = build_optimizer(cfg, model)
    g = torch.Generator().manual_seed(1)
    inputs = []
    for labels, masks in targets:
        inst = Instances((args.size, args.size))
        inst.gt_classes = labels.to(args.device)
        inst.gt_masks = masks.to(args.device)
        inputs.append({"image": torch.randint(0, 256, (3, args.size, args.size), generator=g,
                                              dtype=torch.uint8),
                       "dataset_name": "bench", "task": "semantic", "instances": inst})

    def loss():
        return sum(model(inputs).values())

    return model, optimizer, loss


def build_hf(args, targets):
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig

    backbone = ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                            layer_type="basic",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, use_pretrained_backbone=False, num_labels=NUM_CLASSES,
        num_queries=QUERIES, hidden_dim=HIDDEN, feature_size=HIDDEN, mask_feature_size=HIDDEN,
        num_attention_heads=HEADS, dim_feedforward=FFN, encoder_feedforward_dim=FFN,
        encoder_layers=ENC_LAYERS, decoder_layers=DEC_LAYERS + 1,  # HF runs decoder_layers - 1
        train_num_points=POINTS, use_auxiliary_loss=True)
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(len(targets), 3, args.size, args.size, generator=g).to(args.device)
    mask_labels = [m.float().to(args.device) for _, m in targets]
    class_labels = [lab.to(args.device) for lab, _ in targets]

    def loss():
        return model(pixel_values=pixel_values, mask_labels=mask_labels,
                     class_labels=class_labels).loss

    return model, optimizer, loss


def timed_step(model, optimizer, loss_fn, clip):
    import torch

    cuda = next(model.parameters()).is_cuda

    def now():  # phase times on a GPU need the queued kernels finished
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    t0 = now()
    loss = loss_fn()
    t1 = now()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t2 = now()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    t3 = now()
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    return t3 - t0, t1 - t0, t2 - t1, t3 - t2


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dataseg-root", default=str(REPO),
                   help="checkout whose dataseg package is benchmarked (default: this one)")
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.dataseg_root).resolve()))
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # what DaTaSegTrainer does (FLUSH_DENORMAL); both models
    targets = make_targets(args.batch, args.size)
    runs = {"ours": build_ours(args, targets) + (None,), "hf": build_hf(args, targets) + (None,)}
    import dataseg
    from dataseg.modeling.ops import ms_deform_attn as mda

    times = {name: [] for name in runs}
    for i in range(args.warmup + args.repeats):
        order = ("ours", "hf") if i % 2 == 0 else ("hf", "ours")
        for name in order:
            t = timed_step(*runs[name])
            if i >= args.warmup:
                times[name].append(t)

    def med(name, k):
        return statistics.median(t[k] for t in times[name])

    where = (f"CPU, {args.threads} threads" if args.device == "cpu" else
             f"{torch.cuda.get_device_name()}, ours: deformable attention "
             f"{mda.kernel_status().split(';')[0]}")
    print(f"{where}, fp32, batch {args.batch}x3x{args.size}x{args.size}, "
          f"R18, {QUERIES} queries, hidden {HIDDEN}, {ENC_LAYERS} enc / {DEC_LAYERS} dec layers, "
          f"{POINTS} points, {NUM_CLASSES} classes, {args.repeats} interleaved steps each; "
          f"dataseg from {Path(dataseg.__file__).parent}")
    print(f"{'model':<16}{'step (s)':>10}{'fwd+loss':>10}{'backward':>10}{'optimizer':>10}")
    for name, label in (("ours", "DaTaSeg"), ("hf", "HF Mask2Former")):
        print(f"{label:<16}" + "".join(f"{med(name, k):>10.3f}" for k in range(4)))
    print(f"step ratio DaTaSeg/HF: {med('ours', 0) / med('hf', 0):.2f}x (median); "
          f"best steps {min(t[0] for t in times['ours']):.3f} s vs "
          f"{min(t[0] for t in times['hf']):.3f} s")


if __name__ == "__main__":
    main()
