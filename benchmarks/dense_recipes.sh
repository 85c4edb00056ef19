#!/usr/bin/env bash
# Dense CIFAR-10 recipes on the JPEG archive (BENCHMARKS.md, "Dense CIFAR-10 ResNet-20"): how far
# a longer schedule, a larger batch, label smoothing or a 3x deeper network move test top-1.
#
#   bash benchmarks/dense_recipes.sh ARCHIVE [RECIPE ...]     # default: every recipe, all at once
#
# ACCEL=gpu (default) or cpu; EXTRA: more overrides for every run. The recipes run concurrently (four fit one GPU; on this 2-core CPU
# run one at a time: about 80 s an epoch). Each writes outputs/dense_recipes/<recipe>/summary.json;
# the kept summaries are benchmarks/results/dense_recipes/<recipe>.json.
set -euo pipefail
archive=${1:?usage: dense_recipes.sh ARCHIVE [RECIPE ...]}
shift
PYTHON=${PYTHON:-.venv/bin/python}

declare -A RECIPES=(
  [resnet20-b256-70ep]="model=resnet20 data.pretrain.batch_size=256 data.pretrain.lr=0.2 data.pretrain.warmup_epochs=2 data.pretrain.epochs=70"
  [resnet20-b256-82ep]="model=resnet20 data.pretrain.batch_size=256 data.pretrain.lr=0.2 data.pretrain.warmup_epochs=2 data.pretrain.epochs=82"
  [resnet20-b256-82ep-ls0.1]="model=resnet20 data.pretrain.batch_size=256 data.pretrain.lr=0.2 data.pretrain.warmup_epochs=2 data.pretrain.epochs=82 data.pretrain.label_smoothing=0.1"
  [resnet20-b512-107ep-ls0.1]="model=resnet20 data.pretrain.batch_size=512 data.pretrain.lr=0.4 data.pretrain.warmup_epochs=5 data.pretrain.epochs=107 data.pretrain.label_smoothing=0.1"
  [resnet56-b256-33ep]="model=resnet56 data.pretrain.batch_size=256 data.pretrain.lr=0.2 data.pretrain.warmup_epochs=2 data.pretrain.epochs=33"
  [resnet56-b256-48ep-ls0.1]="model=resnet56 data.pretrain.batch_size=256 data.pretrain.lr=0.2 data.pretrain.warmup_epochs=2 data.pretrain.epochs=48 data.pretrain.label_smoothing=0.1"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${!RECIPES[@]}")
for name in "${names[@]}"; do
  [ -n "${RECIPES[$name]:-}" ] || { echo "error: RECIPE: unknown '$name'; valid: ${!RECIPES[*]}" >&2; exit 2; }
done

# Decode the archive once, before the concurrent runs would each do it.
"$PYTHON" -c "import sys; from unipts.data.datasets import cifar10; cifar10(sys.argv[1], 'data')" "$archive"
for name in "${names[@]}"; do
  out=outputs/dense_recipes/$name
  mkdir -p "$out"
  # shellcheck disable=SC2086  # a recipe is a list of overrides
  "$PYTHON" -m unipts.cli.pretrain data=cifar10 data.root="$archive" ${RECIPES[$name]} \
    trainer=cpu trainer.accelerator="${ACCEL:-gpu}" trainer.precision=bf16-mixed data.num_workers=2 \
    data.pretrain.weight_decay=5e-4 trainer.log_every_n_steps=50 trainer.enable_progress_bar=false \
    ${EXTRA:-} hydra.run.dir="$out" > "$out.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
  printf '%-28s %s\n' "$name" "$(grep -m1 'top-1' "outputs/dense_recipes/$name.log" || echo 'failed: see its .log')"
done
