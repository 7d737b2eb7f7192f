"""Per-step overhead of a real training step: dispatched aten ops, host-device syncs, optimizer
kernel calls, parameter groups and step time, through the real trainer (``DaTaSegTrainer``).

The real configs (default ``configs/dataseg_r50.yaml``; ``--vitdet`` adds
``configs/dataseg_vitdet_b.yaml``) on the synthetic data at tiny crops (``--crop``, default 64;
batch ``--batch``, default 2; fp32 on the CPU; MiniLM text embeddings, no pretrained weights),
so the figures are about the host's work per step, not the arithmetic. Per config and code tree:

- aten ops: operators dispatched during ``trainer.run_step()`` (a ``TorchDispatchMode``: what a
  GPU step would launch), median over the counted steps (the datasets alternate per step);
- syncs: the calls inside the model's forward and the optimizer step that make a GPU host wait
  for the device: ``.item()`` (``aten::_local_scalar_dense``), ``.cpu()``/``.tolist()``/
  ``.numpy()``/``.to("cpu")``, and ops whose output size depends on data (``nonzero``,
  boolean-mask indexing, ``masked_select``, ``unique``); on the CPU nothing waits, the calls
  that WOULD sync are counted. ``d2h`` is the subset that copies tensors to the host;
- optimizer kernels: ``_fused_adamw_``/``_fused_sgd_`` and ``_foreach_*`` calls;
- groups: ``len(optimizer.param_groups)``;
- step time: median wall time of ``run_step`` (separate steps from the counted ones).

``--compare-ref PATH`` runs the same measurements on the dataseg of another checkout (e.g. a git
worktree of the code before a change) in a second process, the two driven step by step in
turn (who goes first alternates), and prints both and the ratios. ``--device cuda`` adds, on a
GPU, the GPU busy fraction (profiler kernel time / step wall time) and the peak memory (not run
in this project's CPU sessions). The 1-minute load average is printed; figures taken with a
load above the threads in use are marked "taken under load" and no verdict is given.

    python benchmarks/bench_step_overhead.py --threads 2 --steps 6
    python benchmarks/bench_step_overhead.py --compare-ref /path/to/old/checkout --threads 1
    python benchmarks/bench_step_overhead.py --device cuda --crop 1024 --batch 2 --amp
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim",
            "unique_consecutive", "_unique", "nonzero_static"}
OPTIMIZER_OPS = ("_fused_adamw_", "_fused_adam_", "_fused_sgd_", "_foreach_")


def config_overrides(args, cfg_file):
    b = args.batch
    crop = args.crop
    return [
        "DATASETS.TRAIN", '("synth_sem_train","synth_pan_train","synth_box_train")',
        "DATASETS.TEST", "()", "DATASETS.TRAIN_BATCH_SIZES", f"[{b},{b},{b}]",
        "SOLVER.IMS_PER_BATCH", str(b), "DATASETS.TRAIN_CROP_SIZES", f"[{crop},{crop},{crop}]",
        "MODEL.WEIGHTS", "", "MODEL.TEXT_ENCODER.NAME", "minilm", "MODEL.DEVICE", args.device,
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.AMP.ENABLED", str(bool(args.amp)),
        "OUTPUT_DIR", os.path.join(args.tmp, Path(cfg_file).stem),
    ] + (["MODEL.VIT.WEIGHTS", ""] if "vitdet" in cfg_file else [])


# ---------------------------------------------------------------------------- worker process
class _Counter:
    """Counts aten ops (TorchDispatchMode) and would-be host syncs during one step."""

    def __init__(self, torch):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.torch = torch
        self.reset()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                counter.ops += 1
                counter.by_op[name] = counter.by_op.get(name, 0) + 1
                phase = counter.phase or "backward+other"
                counter.phases[phase] = counter.phases.get(phase, 0) + 1
                if name.startswith(OPTIMIZER_OPS):
                    counter.optimizer_ops += 1
                if counter.inside:
                    if name in SYNC_OPS:
                        counter.sync(name)
                    elif name in ("index", "index_put_", "index_put") and any(
                            isinstance(i, torch.Tensor) and i.dtype == torch.bool
                            for i in (args[1] if len(args) > 1 else ())):
                        counter.sync("bool-index")
                return func(*args, **(kwargs or {}))

        self.mode = Mode

    def reset(self):
        self.ops, self.optimizer_ops, self.syncs, self.d2h, self.inside = 0, 0, {}, 0, 0
        self.h2d, self.by_op, self.sites, self.phases, self.phase = 0, {}, {}, {}, None

    def sync(self, kind):
        self.syncs[kind] = self.syncs.get(kind, 0) + 1
        # where in dataseg (or detectron2) the sync comes from: the reason it is there
        f = sys._getframe(2)
        while f is not None and not any(s in f.f_code.co_filename for s in
                                        ("/dataseg/", "/detectron2/")):
            f = f.f_back
        site = (f"{kind} {Path(f.f_code.co_filename).parent.name}/"
                f"{Path(f.f_code.co_filename).name}:{f.f_lineno}" if f else f"{kind} ?")
        self.sites[site] = self.sites.get(site, 0) + 1

    def patch_tensor(self):
        """Wraps the Python-level host copies (which do not dispatch for CPU tensors)."""
        torch, counter = self.torch, self
        originals = {}

        def wrap(name, kind):
            orig = getattr(torch.Tensor, name)
            originals[name] = orig

            def wrapped(t, *a, **k):
                if counter.inside:
                    which = kind(t, a, k)
                    if which == "d2h":
                        counter.sync(f".{name}()")
                        counter.d2h += 1
                    elif which == "h2d" and counter.phase == "forward+loss":
                        # the model's own copies (torch's gradient clipping calls a no-op
                        # .to(device) per parameter: not a copy)
                        counter.h2d += 1
                return orig(t, *a, **k)
            setattr(torch.Tensor, name, wrapped)

        def to_kind(t, a, k):
            # On the CPU the model's device is the host: a ``.to(device)`` cannot be told from
            # a copy to the host by its argument. A copy of a tensor that the step made on the
            # device back to the host is spelled ``.cpu()`` in this code base; ``.to(device)``
            # of a host tensor (loader outputs, matcher indices) is a host-to-device copy.
            dev = k.get("device", a[0] if a else None)
            if isinstance(dev, (str, torch.device)) and str(dev) != "meta":
                return "h2d" if t.device.type == "cpu" else "d2h" * (str(dev) == "cpu")
            return None

        # .numpy() needs a host tensor (a .cpu() before it on a GPU): not a sync of its own
        wrap("cpu", lambda t, a, k: "d2h")
        wrap("tolist", lambda t, a, k: "d2h")
        wrap("to", to_kind)
        return originals

    def hooks(self, model, optimizer):
        """Marks the model's forward and the optimizer step as the regions where syncs count
        (the data loader's own CPU work is not a device sync)."""
        counter = self
        inner = getattr(model, "module", model)

        def enter(phase):
            def hook(*_a, **_k):
                counter.inside += 1
                counter.phase = phase
            return hook

        def leave(*_a, **_k):
            counter.inside -= 1
            counter.phase = None

        inner.register_forward_pre_hook(enter("forward+loss"))
        inner.register_forward_hook(leave)
        optimizer.register_step_pre_hook(enter("optimizer"))
        optimizer.register_step_post_hook(leave)


def worker(args):
    import torch
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(args.threads)
    from dataseg.engine.defaults import default_argument_parser, parse_args, setup_cfg
    from dataseg.engine.trainer import DaTaSegTrainer

    cfg_file = args.config_file
    cli = ["--config-file", cfg_file] + config_overrides(args, cfg_file)
    cfg = setup_cfg(parse_args(cli, default_argument_parser()))
    import logging
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    logging.getLogger("dataseg").setLevel(logging.WARNING)
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    counter = _Counter(torch)
    counter.patch_tensor()
    counter.hooks(trainer.model, trainer.optimizer)
    cuda = args.device.startswith("cuda")
    import dataseg
    send({"ready": True, "dataseg": str(Path(dataseg.__file__).parent),
          "groups": len(trainer.optimizer.param_groups),
          "params": sum(len(g["params"]) for g in trainer.optimizer.param_groups)})
    storage = EventStorage(0)
    storage.__enter__()
    it = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        trainer.iter = it
        storage.iter = it
        it += 1
        if cmd == "count":
            counter.reset()
            with counter.mode():
                trainer.run_step()
            send({"ops": counter.ops, "optimizer_ops": counter.optimizer_ops,
                  "syncs": counter.syncs, "d2h": counter.d2h, "h2d": counter.h2d,
                  "by_op": counter.by_op, "sites": counter.sites,
                  "phases": counter.phases})
        elif cmd == "time":
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            trainer.run_step()
            if cuda:
                torch.cuda.synchronize()
            out = {"time": time.perf_counter() - t0}
            if cuda:
                out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            send(out)
        elif cmd == "profile":  # GPU busy fraction: kernel time over wall time of one step
            from torch.profiler import ProfilerActivity, profile

            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                trainer.run_step()
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
            kernel_us = sum(e.device_time for e in prof.events()
                            if e.device_type == torch.autograd.DeviceType.CUDA)
            send({"busy": kernel_us / 1e6 / wall, "wall": wall})
    storage.__exit__(None, None, None)


def send(obj):
    sys.__stdout__.write("@@" + json.dumps(obj) + "\n")
    sys.__stdout__.flush()


# ---------------------------------------------------------------------------- driver
class Worker:
    def __init__(self, root, args, cfg_file):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(root),
               "--config-file", cfg_file, "--device", args.device, "--threads",
               str(args.threads), "--crop", str(args.crop), "--batch", str(args.batch),
               "--tmp", args.tmp] + (["--amp"] if args.amp else [])
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               # both trees read the synthetic world generated under this checkout
               "DETECTRON2_DATASETS": os.environ.get("DETECTRON2_DATASETS",
                                                     str(REPO / "datasets"))}
        self.proc = subprocess.Popen(cmd, cwd=str(root), env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self.read()

    def read(self):
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"worker for {self.proc.args[4]} exited (rc {self.proc.wait()})")

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def _median_dict(dicts):
    keys = {k for d in dicts for k in d}
    return {k: statistics.median(d.get(k, 0) for d in dicts) for k in keys}


def summarise(results):
    med = statistics.median
    counts, times = results["count"], results["time"]
    sync_names = sorted({k for c in counts for k in c["syncs"]})
    out = {"ops": med(c["ops"] for c in counts),
           "optimizer_ops": med(c["optimizer_ops"] for c in counts),
           "syncs": med(sum(c["syncs"].values()) for c in counts),
           "d2h": med(c["d2h"] for c in counts),
           "h2d": med(c["h2d"] for c in counts),
           "by_op": _median_dict([c["by_op"] for c in counts]),
           "sites": _median_dict([c["sites"] for c in counts]),
           "phases": _median_dict([c["phases"] for c in counts]),
           "sync_kinds": {k: med(c["syncs"].get(k, 0) for c in counts) for k in sync_names},
           "time": med(t["time"] for t in times), "times": [t["time"] for t in times]}
    if times and "peak_mem_mb" in times[0]:
        out["peak_mem_mb"] = max(t["peak_mem_mb"] for t in times)
    if results.get("profile"):
        out["busy"] = med(p["busy"] for p in results["profile"])
    return out


def run_config(args, cfg_file, trees):
    workers = {}
    for label, root in trees:
        workers[label] = Worker(root, args, cfg_file)
    results = {label: {"count": [], "time": [], "profile": []} for label in workers}
    labels = list(workers)
    plan = ["time"] * args.warmup + ["count"] * args.steps + ["time"] * args.steps
    if args.device.startswith("cuda"):
        plan += ["profile"] * 3
    for i, cmd in enumerate(plan):
        order = labels if i % 2 == 0 else labels[::-1]
        for label in order:
            r = workers[label].ask(cmd)
            if i >= args.warmup:
                results[label][cmd].append(r)
    for w in workers.values():
        w.close()
    return {label: {**workers[label].info, **summarise(results[label])} for label in labels}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", action="append", default=None,
                   help="config(s) to measure (default configs/dataseg_r50.yaml)")
    p.add_argument("--vitdet", action="store_true", help="also configs/dataseg_vitdet_b.yaml")
    p.add_argument("--compare-ref", default=None, metavar="PATH",
                   help="also measure the dataseg of this checkout, interleaved")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="SOLVER.AMP.ENABLED (GPU only)")
    p.add_argument("--steps", type=int, default=6, help="counted steps and timed steps each")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--details", type=int, default=0, metavar="N",
                   help="also print where the syncs come from and the N most frequent ops")
    p.add_argument("--tmp", default="/tmp/bench_step_overhead")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", default=str(REPO), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.config_file = args.config_file[0]
        return worker(args)
    cfgs = args.config_file or ["configs/dataseg_r50.yaml"]
    if args.vitdet:
        cfgs.append("configs/dataseg_vitdet_b.yaml")
    trees = [("this", REPO)]
    if args.compare_ref:
        ref = Path(args.compare_ref).resolve()
        if not (ref / "dataseg" / "__init__.py").is_file():
            raise SystemExit(f"--compare-ref {ref}: no dataseg package there")
        trees.append(("ref", ref))
    threads_used = args.threads  # the trees take turns: one step runs at a time
    load0 = os.getloadavg()[0]
    print(f"device {args.device}, {args.threads} thread(s), batch {args.batch}, crop {args.crop}, "
          f"{'AMP' if args.amp else 'fp32'}, {args.steps} counted + {args.steps} timed steps "
          f"after {args.warmup} warm-up; 1-min load average at start {load0:.2f}")
    for cfg_file in cfgs:
        res = run_config(args, cfg_file, trees)
        load = max(load0, os.getloadavg()[0])
        print(f"\n{cfg_file} (load average {os.getloadavg()[0]:.2f})")
        head = (f"{'code':<6}{'aten ops':>10}{'syncs':>7}{'d2h':>5}{'to(dev)':>8}{'opt kern':>9}"
                f"{'groups':>7}{'step s':>9}")
        if args.device.startswith("cuda"):
            head += f"{'busy':>7}{'peak MiB':>10}"
        print(head)
        for label, r in res.items():
            line = (f"{label:<6}{r['ops']:>10.0f}{r['syncs']:>7.0f}{r['d2h']:>5.0f}"
                    f"{r['h2d']:>8.0f}{r['optimizer_ops']:>9.0f}{r['groups']:>7}"
                    f"{r['time']:>9.3f}")
            if "busy" in r:
                line += f"{r['busy']:>7.1%}{r['peak_mem_mb']:>10.0f}"
            print(line + f"   ({r['dataseg']})")
            print(f"      sync kinds (median per step): {r['sync_kinds']}")
            if args.details:
                sites = sorted(r["sites"].items(), key=lambda kv: -kv[1])
                print(f"      aten ops by phase: {r['phases']}")
                print("      sync sites: " + ", ".join(f"{k} x{v:g}" for k, v in sites if v))
                ops = sorted(r["by_op"].items(), key=lambda kv: -kv[1])[:args.details]
                print("      top ops: " + ", ".join(f"{k} {v:g}" for k, v in ops))
        if "ref" in res:
            a, b = res["this"], res["ref"]
            # both trees see the same dataset at the same step (same seed): paired ratios
            paired = statistics.median(x / y for x, y in zip(a["times"], b["times"]))
            print(f"ratio this/ref: aten ops {a['ops'] / b['ops']:.2f}x, step time "
                  f"{a['time'] / b['time']:.2f}x (medians), {paired:.2f}x (median of the "
                  f"step-by-step ratios; mean step {statistics.mean(a['times']):.3f} s vs "
                  f"{statistics.mean(b['times']):.3f} s), syncs {a['syncs']:.0f} vs "
                  f"{b['syncs']:.0f}")
        if load > threads_used:
            print(f"taken under load (1-min load {load:.2f} > {threads_used} thread(s)): "
                  "no verdict on times")


if __name__ == "__main__":
    main()
