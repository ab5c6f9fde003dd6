#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what benchmarks/gpu_headline.sh needs on the GPU machine, which reaches no registry:
#   .whl/      cp312 manylinux wheels of benchmarks/gpu_requirements.txt (Dagster, diffusers, pydantic, ...)
#   .fashion/  the four Fashion-MNIST idx files (from the Debian package dataset-fashion-mnist)
# Both folders are git-ignored; the device tool carries them: run(command=..., carry=[".whl", ".fashion"]).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl .fashion
mkdir -p .whl .fashion
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r benchmarks/gpu_requirements.txt
src=/usr/share/datasets/fashion-mnist
[ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "gpu_kit: $src is missing: apt-get install dataset-fashion-mnist" >&2; exit 1; }
cp "$src"/*-ubyte.gz .fashion/
echo "gpu_kit: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1); Fashion-MNIST $(du -sh .fashion | cut -f1); repo $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1) (the device tool carries 64 MiB at most)"
