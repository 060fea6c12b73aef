#!/usr/bin/env bash
# One call of a GPU session (see experiments/device/README.md): install the carried wheels, unpack the carried
# dataset shards into /root/data, run the named stages in order under one time budget (each stage resumes from
# its state under /root and stops cleanly before the budget), then pack /root/results into $OUT/results.tar.
#   BUDGET_MIN=9 bash experiments/device/call.sh cls seg speed joint
# KEEP_RUNS (shell patterns of matched runs) returns those runs for the next machine: experiments/device/keep.py
# TAG names this call.sh's logs when two run side by side (each with its own OUT and CUDA_VISIBLE_DEVICES)
set -u
# once per machine (two call.sh side by side must not both write /tmp/site)
bash experiments/device/wheels.sh || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
mkdir -p /root/data /root/results/logs
# finished runs kept from an earlier machine (keep.py pack, KEEP_RUNS below) go back into the grid's state
keep=(.device-data/keep-matched-*.tar)
[ -f "${keep[0]}" ] && python3 experiments/device/keep.py unpack /root/matched "${keep[@]}"
for t in .device-data/*.tar; do
  case $t in */keep-*) continue ;; esac
  [ -f "$t" ] && tar -xf "$t" -C /root/data && echo "unpacked $t"
done
end=$(python3 -c "import time; print(time.time() + 60 * ${BUDGET_MIN:-9})")
left() { python3 -c "import time; print(f'{($end - time.time()) / 60:.2f}')"; }
n=$(ls /root/results/logs | wc -l)
for stage in "$@"; do
  m=$(left)
  if python3 -c "import sys; sys.exit(float('$m') > 0.7)"; then echo "no time left for $stage"; continue; fi
  echo "=== $stage with $m minutes ($(date -u +%T))"
  case $stage in
    cls)   cmd=(python3 experiments/classification/table2.py run --budget-minutes "$m" ${CLS_ARGS:-}) ;;
    # matched width x seeds (issue 12), one job per GPU; `matchedsearch`: the recipe search on held-out train
    matched) cmd=(python3 experiments/classification/matched.py run --budget-minutes "$m" --out /root/results/matched ${MATCHED_ARGS:-}) ;;
    matchedsearch) cmd=(python3 experiments/classification/matched.py search --budget-minutes "$m" --out /root/results/matched ${MATCHED_ARGS:-}) ;;
    matchedbench) cmd=(python3 experiments/classification/matched.py bench --out /root/results/matched ${MATCHED_ARGS:-}) ;;
    # segmentation at matched width x seeds (issue 12), backbones from the matched classifiers in /root/matched/runs
    segmatched) cmd=(python3 experiments/segmentation/matched.py run --budget-minutes "$m" --out /root/results/segmatched ${SEGMATCHED_ARGS:-}) ;;
    seg)   cmd=(python3 experiments/segmentation/camvid.py run --budget-minutes "$m" ${SEG_ARGS:-}) ;;
    speed) cmd=(python3 experiments/speed/run.py run --budget-minutes "$m" ${SPEED_ARGS:-}) ;;
    joint) cmd=(python3 experiments/joint/run.py run --budget-minutes "$m" --points "${JOINT_POINTS:-c8,c32}" ${JOINT_ARGS:-}) ;;
    # one process per operating point and seed side by side on the GPU(s) (run.py --parallel), each with its own
    # runs.json (/root/results/joint-<point>-s<seed>/) and work folder, one shared cache; logs in /root/results/joint/logs/
    jointpar) cmd=(bash -c 'python3 experiments/joint/run.py run --parallel --budget-minutes "$0" --points "${JOINT_POINTS:-c8,c32}" \
                     ${JOINT_ARGS:-}; tail -n 12 /root/results/joint/logs/joint-*.log' "$m") ;;
    *)     echo "unknown stage $stage"; continue ;;
  esac
  # a stage that overruns its budget is stopped 20 s after it, so the results still get packed
  timeout -k 5 "$(python3 -c "print(int(60 * $m) + 20)")" "${cmd[@]}" 2>&1 | tee "/root/results/logs/$(printf %02d "$n")-$stage${TAG:+-$TAG}.log"
  n=$((n + 1))
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
# bundle candidates (matched / segmatched: out/bundled/<zoo name>.safetensors) come back as files of their own, so
# that results.tar stays under the 16 MiB a returned file may have
tar --exclude='*/bundled/*.safetensors' -cf "$OUT/results.tar" -C /root results
for w in /root/results/*/bundled/*.safetensors; do [ -f "$w" ] && cp "$w" "$OUT/"; done
# KEEP_RUNS="c8-*-w0.25-*,...": those finished matched runs (fp16) come back as keep-matched-NNN.tar, to be carried
# (under .device-data/) into the next machine's first call if this one is lost
[ -n "${KEEP_RUNS:-}" ] && python3 experiments/device/keep.py pack /root/matched "$KEEP_RUNS" "$OUT"
ls -la "$OUT"
