#!/usr/bin/env bash
# The checks CI cannot run (its machines have no GPU): the CUDA deformable-attention kernel's
# tests and benchmark, the quickstart trained on one GPU in fp32 and with AMP, and a one-rank
# NCCL run through the multi-process launcher. Each step writes OUTDIR/<step>.log and the run
# goes on when a step fails; the last lines printed are a summary with each step's time.
#
#   bash scripts/gpu_checks.sh OUTDIR [STEP ...]
#   steps (default: all, in this order): env kernel tests bench amp fp32 nccl trainstep r50
#   r50: the step time of the real R50 setting (configs/dataseg_r50.yaml: LSJ 1024 / 512 crops,
#   100 queries, 12544 points, AMP) at per-GPU batch R50_BATCHES (default "2 4"; batch 16 on 8
#   GPUs is 2 per GPU) on the synthetic images (upscaled to the real sizes by the same
#   augmentations), R50_ITERS iterations (default 200); R50_CONFIGS adds ablation configs.
#
# Environment: PYTHON (default python), ITERS (quickstart iterations, default 1200),
# WORKERS (data-loader workers, default 4).
set -uo pipefail
OUT="${1:?usage: gpu_checks.sh OUTDIR [STEP ...]}"
shift
STEPS="${*:-env kernel tests bench amp fp32 nccl trainstep r50}"
PY="${PYTHON:-python}"
ITERS="${ITERS:-1200}"
WORKERS="${WORKERS:-4}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SUMMARY=()

quickstart() {  # quickstart() NAME [OVERRIDES...]: train + evaluate on the GPU
    local name="$1"; shift
    "$PY" train_net.py --config-file configs/quickstart.yaml "$@" MODEL.DEVICE cuda \
        SOLVER.MAX_ITER "$ITERS" DATALOADER.NUM_WORKERS "$WORKERS" \
        OUTPUT_DIR "output/gpu_$name" \
        && cp "output/gpu_$name/eval_summary.json" "$OUT/eval_summary_$name.json"
}

r50() {  # the real setting's step time; detectron2 logs seconds per iteration at the end
    local cfg b name rc=0
    for cfg in ${R50_CONFIGS:-configs/dataseg_r50.yaml}; do
        for b in ${R50_BATCHES:-2 4}; do
            name="$(basename "$cfg" .yaml)_b$b"
            "$PY" train_net.py --config-file "$cfg" \
                DATASETS.TRAIN '("synth_sem_train","synth_pan_train","synth_box_train")' \
                DATASETS.TEST '()' DATASETS.TRAIN_BATCH_SIZES "[$b,$b,$b]" SOLVER.IMS_PER_BATCH "$b" \
                MODEL.WEIGHTS '""' MODEL.TEXT_ENCODER.NAME minilm MODEL.DEVICE cuda \
                SOLVER.MAX_ITER "${R50_ITERS:-200}" DATALOADER.NUM_WORKERS "$WORKERS" \
                OUTPUT_DIR "output/gpu_$name" > "$OUT/r50_$name.log" 2>&1 \
                || { rc=1; echo "$name: train_net.py failed, see r50_$name.log"; }
            echo "$name: $(grep -h 'Overall training speed' "$OUT/r50_$name.log")"
            grep -h "max_mem" "$OUT/r50_$name.log" | tail -1 | grep -o "time: .*"
        done
    done
    return $rc
}

run_step() {
    local step="$1" t0 rc
    t0=$(date +%s)
    case "$step" in
        env) nvidia-smi && "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
                && "$PY" -m dataseg.collect_env ;;
        kernel) "$PY" -c "from dataseg.modeling.ops import ms_deform_attn as m; s = m.kernel_status(); print(s); raise SystemExit(0 if s.startswith('built') else 1)" \
                || DATASEG_BUILD_CUDA=1 "$PY" setup.py build_ext --inplace ;;
        tests) "$PY" -m pytest -v -p no:cacheprovider tests/ops ;;
        bench) "$PY" benchmarks/bench_deform_attn.py ;;
        amp) quickstart amp SOLVER.AMP.ENABLED True ;;
        fp32) quickstart fp32 SOLVER.AMP.ENABLED False ;;
        nccl) DATASEG_FORCE_DISTRIBUTED=1 "$PY" train_net.py --config-file configs/quickstart.yaml \
                --num-gpus 1 MODEL.DEVICE cuda SOLVER.MAX_ITER 100 DATALOADER.NUM_WORKERS "$WORKERS" \
                OUTPUT_DIR output/gpu_nccl \
                && cp output/gpu_nccl/eval_summary.json "$OUT/eval_summary_nccl.json" ;;
        trainstep) "$PY" benchmarks/bench_train_step.py --device cuda --repeats 30 \
                && "$PY" benchmarks/bench_train_step.py --device cuda --batch 16 --size 256 --repeats 30 ;;
        r50) r50 ;;
        *) echo "unknown step $step"; false ;;
    esac > "$OUT/$step.log" 2>&1
    rc=$?
    SUMMARY+=("$(printf '%-10s rc=%-3s %5ss' "$step" "$rc" "$(( $(date +%s) - t0 ))")")
    echo "step $step: rc=$rc"; tail -n 4 "$OUT/$step.log"
}

for s in $STEPS; do run_step "$s"; done
printf '%s\n' "== summary ==" "${SUMMARY[@]}" | tee "$OUT/summary.txt"
