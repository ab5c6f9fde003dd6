#!/usr/bin/env bash
# Issue 13's measurements that a 2-core CPU session cannot fit (the Fashion generator alone is 2,000 steps of 3 s on
# an AVX2 CPU), as ONE call of the device tool on a GPU machine. Prepare here first (downloads wheels, copies data):
#   bash benchmarks/gpu_kit.sh
# then, through the device tool (its 15 minutes include the machine's start; this script keeps inside ~9):
#   run(command="bash benchmarks/gpu_headline.sh", carry=[".whl", ".fashion"], timeout_s=600)
# What it runs, in this order (the first matters most), each under its own time limit so a slow part cannot take the
# results of the others with it:
#   1. scaling at 200 real images per class: `synthaug experiment --profile fashion-headline` with ratios 0/1/3/6
#      (filtered arm: the profile's thresholds, no top-k) and CAS (a classifier on 200 filtered synthetic images per
#      class only, experiments.cas_per_class=200: as many as the real-only run has), 3 seeds; the generator (trained on the whole training split) samples 1,800 per class so that
#      ratio 6 (1,200 accepted per class) fits even the class the judge accepts least (shirt, ~68%)
#   2. the gpu-marked tests (CUDA sampling/training in bf16, half-precision pretrained pipelines)
# Results land in $OUT, which the device tool brings back: machine.txt, scaling.log, scaling_experiments.{json,md},
# gpu_tests.log. Record them in BENCHMARKS.md with the machine.
#   bash benchmarks/gpu_headline.sh --smoke   # the same commands at toy sizes on whatever device is here (a CPU is
#                                             # fine: a few minutes); checks the plumbing, its numbers mean nothing
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
OUT=${OUT:-$(mktemp -d)}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 DAGSTER_HOME=$work/dagster_home
mkdir -p "$DAGSTER_HOME"

# The GPU image has torch but no Dagster/diffusers/pydantic: install the carried wheels (never on a machine that has them).
if ! python3 -c "import dagster, diffusers, pydantic" 2>/dev/null; then
  [ -d .whl ] || { echo "gpu_headline: Dagster/diffusers are missing and no .whl folder was carried: run benchmarks/gpu_kit.sh here and carry .whl" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

fashion=/usr/share/datasets/fashion-mnist
[ -d .fashion ] && fashion=$PWD/.fashion
[ -f "$fashion/train-images-idx3-ubyte.gz" ] || { echo "gpu_headline: no Fashion-MNIST at $fashion: run benchmarks/gpu_kit.sh here and carry .fashion" >&2; exit 2; }

{
  date -u +"%Y-%m-%d %H:%M UTC"
  if git rev-parse --short HEAD >/dev/null 2>&1; then  # the device tool sends the working tree, maybe without .git
    echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (+ uncommitted changes)')"
  else
    echo "commit: no .git here (record the commit the working tree was sent from)"
  fi
  python3 -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda); print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu only'); import os; print('cpus', os.cpu_count())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} | tee "$OUT/machine.txt"

scaling=(
  --set data.path="$fashion"
  --set output.url="$work/out/{profile}"
  --set experiments.few_shot_k=200
  --set "experiments.ratios=[0,1,3,6]"
  --set "experiments.arms=[filtered]"
  --set experiments.synthetic_only=true
  --set experiments.cas_per_class=200
  --set generator.images_per_class=1800
  --set filter.top_k=null
  --set filter.diversity=none
)
limit=480
if [ $smoke = 1 ]; then  # toy sizes: every stage runs, in about two minutes on a 2-core CPU
  scaling+=(
    --set experiments.few_shot_k=2 --set experiments.cas_per_class=2 --set "experiments.seeds=[0]" --set experiments.validation_per_class=5
    --set data.test_per_class=10 --set generator.images_per_class=14 --set generator.train_steps=3
    --set generator.sample_steps=2 --set generator.batch_size=16 --set judge.steps=3 --set classifier.steps=3
    --set filter.min_confidence=0 --set filter.require_label_match=false --set "evaluation.severities=[1]"
  )
  limit=1200
fi

echo "== scaling at 200/class, ratios 0/1/3/6 + CAS ($(date -u +%T), limit ${limit}s)"
start=$(date +%s)
timeout "$limit" python3 -m synthaug_pipeline experiment --profile fashion-headline "${scaling[@]}" 2>&1 | tee "$OUT/scaling.log"
rc=${PIPESTATUS[0]}
echo "scaling: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$OUT/scaling.log"
for f in experiments.json experiments.md; do
  [ -f "$work/out/fashion-headline/$f" ] && cp "$work/out/fashion-headline/$f" "$OUT/scaling_$f"
done

if [ $smoke = 0 ]; then
  echo "== gpu-marked tests ($(date -u +%T))"
  timeout 75 python3 -m pytest -q -m gpu -p no:cacheprovider synthaug_pipeline_tests/lib/test_diffusion.py \
    synthaug_pipeline_tests/lib/test_classifier.py synthaug_pipeline_tests/lib/test_pretrained_loading.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
exit "$rc"
