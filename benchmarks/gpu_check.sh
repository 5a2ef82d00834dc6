#!/usr/bin/env bash
# The GPU check: what a machine with one GPU gives hubbub, in at most ~8 minutes, as is.
#
#   bash scripts/setup.sh                  # once: the voices' synthesizers and hubbub (CUDA torch)
#   bash benchmarks/gpu_check.sh [WORK]    # default WORK=gpu_check; everything it writes goes there
#
# 1. Throughput and peak memory of the four paper models (Conv-TasNet, DPRNN, TF-GridNet, GLA
#    U-Net) training with PIT in bf16 at the paper batch (4 x 4 s, 8 kHz), eager and under
#    torch.compile (benchmarks/gpu_throughput.py; at most ~4 minutes).
# 2. A short quality run: the built-in voices, 3000 LibriMix-style 8 kHz mixtures, the paper
#    Conv-TasNet trained with PIT for $STEPS steps in bf16, evaluated on the test split (unseen
#    speakers). Figures: WORK/throughput.json, WORK/eval.json, WORK/summary.md, printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-gpu_check}"
STEPS="${STEPS:-1500}"
PY="${PYTHON:-python3}"
mkdir -p "$WORK"
start=$SECONDS
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch: this check needs one")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$WORK/gpu.txt"

echo "[1/2] throughput, eager and compiled ($(date -u +%FT%TZ))"
timeout 300 "$PY" benchmarks/gpu_throughput.py --budget-s 15 --steps 30 --json "$WORK/throughput.json" \
  | tee "$WORK/throughput.log" || echo "throughput stopped at its 5-minute limit: see $WORK/throughput.log"

echo "[2/2] quality: paper Conv-TasNet, $STEPS PIT steps ($(( SECONDS - start )) s so far)"
"$PY" -m hubbub.cli voices --out "$WORK/voices" --quiet
"$PY" -m hubbub.cli simulate --recipe librimix --num 3000 --out "$WORK/librimix8k" --quiet \
  --set speech.corpus="$WORK/voices" --set sample_rate_hz=8000
"$PY" -m hubbub.cli finetune pit --shards "$WORK/librimix8k" --config pit --out "$WORK/run" \
  --set steps="$STEPS" --set schedule.warmup_steps=100 --set eval_every=500 --set ckpt_every=500 \
  --set log_every=50 --set data.num_workers=4 --set data.valid_max_samples=64 > "$WORK/train.log" 2>&1
"$PY" -m hubbub.cli evaluate "$WORK/run" --shards "$WORK/librimix8k" --split test --max-samples 200 --json \
  > "$WORK/eval.json"
"$PY" - "$WORK" "$STEPS" "$(( SECONDS - start ))" <<'PYEOF' | tee "$WORK/summary.md"
import json, sys
work, steps, elapsed = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, "benchmarks")
from gpu_throughput import format_table
try:
    print(format_table(json.load(open(f"{work}/throughput.json"))))
except FileNotFoundError:
    print("(no throughput figures: see throughput.log)")
ev = json.load(open(f"{work}/eval.json"))
mean = ev["overall"]["mean"]
print(f"\nquality: paper Conv-TasNet, {steps} PIT steps (bf16, batch 4 x 4 s), test split "
      f"({ev['overall']['count']} mixtures of unseen built-in speakers): SI-SNRi {mean['si_snri']:.2f} dB, "
      f"SDRi {mean['sdri']:.2f} dB; the whole check took {elapsed} s")
PYEOF
