#!/usr/bin/env bash
# One GPU call: ABXI Food-Kitchen, SASRec/GRU4Rec/TEMA x 3 seeds in parallel on one GPU, each capped at
# BUDGET seconds of training (train.max_train_s), then test once on the selected checkpoint.
# Needs .devdata/ (git-ignored): raw/abxi-food-kitchen, raw/food_kitchen_titles.tsv, abxi-content/{tags,features}
# produced by `temarec tags` and `temarec features` on this machine. Writes $OUT/summary.json and $OUT/log.txt.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-150}
D=/tmp/abxi
python3 -m temarec prepare --format abxi --input .devdata/raw/abxi-food-kitchen --domains Food,Kitchen \
    --titles .devdata/raw/food_kitchen_titles.tsv --out $D > $OUT/log.txt 2>&1 || exit 1
cp -r .devdata/abxi-content/tags .devdata/abxi-content/features $D/
nvidia-smi --query-gpu=name --format=csv,noheader >> $OUT/log.txt
for m in sasrec gru4rec tema; do
  for s in 0 1 2; do
    python3 -m temarec train --dataset $D --model $m --out /tmp/runs/$m-$s --set train.seed=$s \
      --set train.device=cuda --set train.threads=1 --set train.max_train_s=$BUDGET > /tmp/log-$m-$s.txt 2>&1 &
  done
done
wait
for f in /tmp/log-*.txt; do echo "== $f"; grep -v "it/s\]" $f | tail -25; done >> $OUT/log.txt
python3 - <<'PY'
import glob, json, os
out = {os.path.basename(p): json.load(open(p + "/metrics.json")) for p in sorted(glob.glob("/tmp/runs/*"))
       if os.path.exists(p + "/metrics.json")}
curves = {os.path.basename(p): [json.loads(l) for l in open(p + "/metrics.jsonl")] for p in sorted(glob.glob("/tmp/runs/*"))
          if os.path.exists(p + "/metrics.jsonl")}
for v in curves.values():
    for r in v:
        r.pop("valid", None)
json.dump({"metrics": out, "curves": curves}, open(os.environ["OUT"] + "/summary.json", "w"), indent=1)
PY
