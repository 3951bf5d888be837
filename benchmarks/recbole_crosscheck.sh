#!/usr/bin/env bash
# Outside cross-check of the harness: RecBole 1.2.1's SASRec on the exported ABXI Food-Kitchen split, next to ours.
#
#   benchmarks/recbole_crosscheck.sh [WORK]        (default WORK=/tmp/recbole-crosscheck)
#   env: EPOCHS (default 5), SEED (0), VENV (/tmp/recbole-venv), SHARED (../shared/data), THREADS (torch threads)
#
# 1. a throwaway venv OUTSIDE the repo: torch==2.13.0 first (the CPU wheel), then recbole==1.2.1 with the pins it
#    needs on a current Python ('numpy<2': RecBole 1.2.1 predates numpy 2; 'setuptools<81': ray 2.6 imports
#    pkg_resources; 'pandas<3': under pandas 3's copy-on-write RecBole's chained inplace fillna is a no-op).
#    Its other dependencies (ray 2.6.3, colorlog, thop, tensorboard, ...) come with it. RecBole 1.2.1 calls
#    torch.load without weights_only, which torch >= 2.6 refuses for its checkpoints:
#    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 restores the old default, for the RecBole process only.
# 2. temarec prepare (ABXI) -> temarec export --format recbole: RecBole's leave-one-out (order TO, split LS
#    valid_and_test, mode full) reproduces our split; the helper checks that every test (user, target) agrees.
# 3. RecBole SASRec and temarec SASRec, same size (D 64, 2 layers, 1 head, dropout 0.3, max_len 50, full softmax),
#    both selected on validation, EPOCHS at most each.
#
# The difference that matters when reading the numbers: RecBole ranks the target among ALL items of both domains
# (28,095) and reports MRR@10 (truncated at 10); temarec's `full` protocol ranks it among the items of the target's
# domain only, with untruncated MRR. The helper therefore also ranks RecBole's scores per domain, which is the
# like-for-like row. The training objectives differ too: RecBole's CE is a softmax over all items, ours a softmax
# within the target's domain; RecBole's SASRec is post-LN with a 256-wide FFN, ours pre-LN with a D-wide FFN.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/tmp/recbole-crosscheck}"
EPOCHS="${EPOCHS:-5}"
SEED="${SEED:-0}"
VENV="${VENV:-/tmp/recbole-venv}"
SHARED="${SHARED:-$(cd "$REPO/.." && pwd)/shared/data}"
PY="${PY:-$REPO/.venv/bin/python}"
NAME=abxi-food-kitchen

case "$VENV" in "$REPO"/*) echo "VENV must be outside the repository ($REPO)" >&2; exit 2;; esac
mkdir -p "$WORK"

if ! "$VENV/bin/python" -c "import recbole" 2>/dev/null; then
  echo "== creating $VENV with RecBole 1.2.1"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q recbole==1.2.1 'numpy<2' 'setuptools<81' 'pandas<3'
fi
"$VENV/bin/python" -c "import recbole, torch; print('RecBole', recbole.__version__, 'torch', torch.__version__)"

if [ ! -f "$WORK/data/$NAME/manifest.json" ]; then
  echo "== temarec prepare (ABXI Food-Kitchen)"
  "$PY" -m temarec prepare --format abxi --input "$SHARED/abxi-food-kitchen" --domains Food,Kitchen \
    --titles "$SHARED/amazon-titles/food_kitchen_titles.tsv" --out "$WORK/data/$NAME"
fi
echo "== temarec export --format recbole"
"$PY" -m temarec export --dataset "$WORK/data/$NAME" --format recbole --out "$WORK/recbole_data/$NAME" --overwrite

THREAD_SETTING=()
if [ -n "${THREADS:-}" ]; then THREAD_SETTING=(--set "train.threads=$THREADS"); export OMP_NUM_THREADS="$THREADS"; fi

echo "== RecBole SASRec, at most $EPOCHS epochs"
(cd "$WORK" && TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$VENV/bin/python" "$REPO/benchmarks/recbole_crosscheck.py" recbole \
  --yaml "$WORK/recbole_data/$NAME/$NAME.yaml" --epochs "$EPOCHS" --seed "$SEED" --out "$WORK/recbole_ranks.json")

OURS="$WORK/ours-sasrec-e$EPOCHS-s$SEED"
if [ ! -f "$OURS/metrics.json" ]; then
  echo "== temarec SASRec, at most $EPOCHS epochs"
  rm -rf "$OURS"
  "$PY" -m temarec train --dataset "$WORK/data/$NAME" --model sasrec --out "$OURS" \
    --set train.epochs="$EPOCHS" --set train.seed="$SEED" --set model.dim=64 --set model.layers=2 \
    --set model.heads=1 --set model.dropout=0.3 --set model.loss=full --set data.max_len=50 "${THREAD_SETTING[@]}" \
    > "$OURS.log"
fi

echo "== comparison (test split, metrics in %)"
"$PY" "$REPO/benchmarks/recbole_crosscheck.py" compare --recbole "$WORK/recbole_ranks.json" --ours-run "$OURS" \
  --dataset "$WORK/data/$NAME" | tee "$WORK/comparison.md"
