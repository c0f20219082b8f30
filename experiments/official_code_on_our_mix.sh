#!/usr/bin/env bash
# Cross-check of the engine (2026-11-24, commit cc6f2ac): HINT's official MNIST training code on our Table II mix.
# `poisonbench poisons export` writes trial 0's ρ = 1 mix on full MNIST as HINT's untargeted file; the official
# `train_with_HIN_mnist.py` (patched only to run on the CPU) trains on it with its own loader, model and 10 epochs,
# HINT off (--hin_schedule 99), and once on clean data (--benign). Compare with
#   poisonbench defend --method none --dataset mnist --data-dir D --recipe quick --poison-ratio 1 --trial 0
#   experiments/official_code_on_our_mix.sh HINT_CLONE MNIST_DIR [results]
# HINT_CLONE: a clone of minhhao97vn/HINT; MNIST_DIR: the four IDX files (experiments/mnist_full.sh fetches them).
# Crafting the four attacks over 59,000 rows takes about an hour on a 2-core CPU; each official run about 10 min.
set -euo pipefail
hint=$1; data=$2; results=${3:-results}
work=$(mktemp -d)
cp -r "$hint"/. "$work"/
sed -i "s/args.device = torch.device('cuda', args.gpu_id)/args.device = torch.device('cpu')/" \
  "$work/train_with_HIN_mnist.py"
mkdir -p "$work/data/CustomMNIST/raw" "$work/output"  # torchvision looks under the class name; test() writes output/
cp "$data"/*-ubyte "$work/data/CustomMNIST/raw/"
mix=$work/ours_rho1_trial0.pt
poisonbench poisons export --dataset mnist --data-dir "$data" --results "$results" --poison-ratio 1 --trial 0 \
  --out "$mix" --json
cd "$work"
python -c "import tqdm" 2>/dev/null || { echo "the official code needs tqdm (pip install tqdm)" >&2; exit 1; }
python train_with_HIN_mnist.py --no_benign --poison_path "$mix" --epochs 10 --hin_schedule 99 --seed 0 \
  | tr '\r' '\n' | grep "Accuracy of the network" | tail -1
python train_with_HIN_mnist.py --benign --epochs 10 --hin_schedule 99 --seed 0 \
  | tr '\r' '\n' | grep "Accuracy of the network" | tail -1
