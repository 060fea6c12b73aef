#!/usr/bin/env bash
# A whole session's GPU work as background chains that outlive the 10-minute calls (experiments/device/README.md):
#   bash experiments/device/plan.sh start C0 [C1 ...]   copy the checkout to /root/repo, start chain Ck on GPU k mod the
#                  number of GPUs (setsid; on one GPU every chain shares it), its log /root/results/logs/chain-k-Ck.log
#   bash experiments/device/plan.sh poll [S]   sleep S seconds (or until every chain ended), show each chain's tail
#   bash experiments/device/plan.sh autotune   issue 13's cResNet-51 vs decoder + ResNet-50, compiled in each of
#                  AUTOTUNE_MODES (default: default, then max-autotune-no-cudagraphs with AUTOTUNE_S s) ($OUT/speed-*.json)
#   bash experiments/device/plan.sh collect    /root/results (no bundle candidates) and the stages' runs.json as
#                  $OUT/results.tar
# Each chain runs call.sh stages one after the other on its GPU, each stage with its own --state and --out, so
# they never share a runs.json; a stage resumes from /root when a chain is started again on the same machine.
# Chains (2026-11-28 (i) session, `nvidia-h200-x2`):
#   e2e   issue 13: full-width classifiers for the e2e top-1 (c8/c16 cResNet-51, RGB ResNet-50, seed 0, the
#         40-epoch recipe as the earlier e2e run), then gpu_decode.py with them
#   probe issue 12's c8 C1 probe (decoder_resnet50 on the latent, imagenette60, width 0.25, three seeds)
#   probecodec  the same with g_s starting from the codec's decoder (decoder_resnet50_codec; the (j) session)
#   probeslow   the same with g_s at 1/100 of the lr (decoder_resnet50_codec_slow; next session)
#   c3    issue 12's C3 at c32: four 40-epoch backbones, then the segmenters still missing (CamVid staged; (j) session)
#   search issue 12's RGB >= 90% miss: recipe search on held-out train (imagenette60 + cutmix / cutmix-ep80, run in the
#         (j) session; the (i) ran ep80 / b64); a variant above the recorded ep60 (90.81 held-out) then trains on val
#   grid60 issue 12's matched capacity under imagenette60 at one point and width, three arms x three seeds, e.g.
#         `plan.sh start "grid60 c8 1" "grid60 c8 0.5"` (a chain with arguments: quote it; a third argument: runs
#         per GPU, default 3; a fourth: the seeds, default 0,1,2)
#   ratio issue 13's .ndc / nvJPEG ratio at c8 and c16 in 20 alternating rounds (gpu_decode.py e2e-ratio,
#         random weights: timing only), on an idle GPU: put it first in a chain, e.g. `plan.sh start "ratio; grid60 c8 0.5"`
set -u
HELDOUT_EP60=0.9081309398099261   # results/classification/matched/search.json: search-ep60, the imagenette60 recipe itself

e2e() {
  stage g0a 14 matched "--points c8,c16 --widths 1 --arms latent:cresnet51,rgb:resnet50 --seeds 0 --per-gpu 3"
  mkdir -p /root/cls
  for k in c8-latent-cresnet51 c16-latent-cresnet51 none-rgb-resnet50; do
    ln -sfn "/root/matched/runs/$k-w1-s0" "/root/cls/$k-s0"
  done
  python3 experiments/speed/gpu_decode.py run /root/data/imagenette2-224/val --out /root/results/gpu_decode \
    --work /root/gpu_decode_work --classifiers /root/cls --budget-minutes 8 --repeat 4 \
    2>&1 | tee /root/results/logs/gpu_decode.log
}

probe() {
  stage g0b 12 matched "--state /root/mprobe --out /root/results/mprobe --recipe imagenette60 --points c8
    --widths 0.25 --arms latent:decoder_resnet50 --per-gpu 3"
}

probecodec() {
  stage g0c 14 matched "--state /root/mprobe2 --out /root/results/mprobe2 --recipe imagenette60 --points c8
    --widths 0.25 --arms latent:decoder_resnet50_codec --per-gpu 3"
}

probeslow() {
  stage g0d 14 matched "--state /root/mprobe3 --out /root/results/mprobe3 --recipe imagenette60 --points c8
    --widths 0.25 --arms latent:decoder_resnet50_codec_slow --per-gpu 3"
}

c3() {   # issue 12's C3 at c32: the segmenters still missing (seeds) on backbones of the committed 40-epoch recipe
  stage g1c 14 matched "--points c32 --widths 0.25 --arms decoded:resnet50,latent:cresnet51,latent:cresnet39 --runs
    c32-decoded-resnet50-w0.25-s2,c32-latent-cresnet51-w0.25-s2,c32-latent-cresnet39-w0.25-s1,c32-latent-cresnet39-w0.25-s2
    --per-gpu 4"
  stage g1d 8 segmatched "--points c32 --widths 0.25 --done results/segmentation/matched/runs.json --runs
    c32-decoded-resnet50_d-w0.25-s2,c32-latent-cresnet51_d-w0.25-s2,c32-latent-cresnet39_d-w0.25-s1,c32-latent-cresnet39_d-w0.25-s2"
}

grid60() {   # POINT WIDTH [PER_GPU [SEEDS]]: its own state, so that chains on other GPUs never share a runs.json
  stage "g60-$1-$2" 30 matched "--state /root/m60-$1-$2 --out /root/results/m60-$1-$2 --recipe imagenette60
    --points $1 --widths $2 --arms decoded:resnet50,latent:cresnet51,latent:cresnet39 --per-gpu ${3:-3}
    --seeds ${4:-0,1,2}"
}

ratio() {
  bash experiments/device/wheels.sh || return 1
  python3 experiments/speed/gpu_decode.py run /root/data/imagenette2-224/val --out /root/results/gpu_decode_ratio \
    --work /root/gpu_decode_work --stages prepare,e2e-ratio --budget-minutes 8 \
    2>&1 | grep -v "^W[0-9]\{4\} " | tee /root/results/logs/gpu_decode_ratio.log
}

search() {
  stage g1a 16 matchedsearch "--state /root/msearch --out /root/results/msearch --recipe imagenette60 --widths 1
    --variants cutmix,cutmix-ep80 --per-gpu 2"
  sets=$(python3 - "$HELDOUT_EP60" <<'EOF'
import json, sys
rows = json.load(open("/root/msearch/search.json")).values()
best = max(rows, key=lambda r: r["val"]["top1"], default=None)
if best and best["val"]["top1"] > float(sys.argv[1]):
    print(" ".join(f"--set {k}={json.dumps(v)}" for k, v in best["overrides"].items()))
EOF
)
  echo "search winner over ep60: ${sets:-none}"
  [ -n "$sets" ] && stage g1b 16 matched "--state /root/mval --out /root/results/mval --recipe imagenette60 $sets
    --points c8 --widths 1 --arms rgb:resnet50 --per-gpu 3"
}

stage() {  # TAG BUDGET_MIN STAGE ARGS: one call.sh, ARGS as the stage's *_ARGS, its OUT under /root/calls (a run
           # call's own $OUT is emptied at the next call)
  mkdir -p "/root/calls/$1"
  OUT="/root/calls/$1" TAG="$1" BUDGET_MIN="$2" MATCHED_ARGS="$(echo $4)" SEGMATCHED_ARGS="$(echo $4)" \
    bash experiments/device/call.sh "$3"
}

case "${1:-}" in
  start)
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    mkdir -p /root/data /root/results/logs /root/repo
    for t in .device-data/*.tar; do [ -f "$t" ] && tar -xf "$t" -C /root/data && echo "unpacked $t"; done
    tar --exclude=.device-data -cf - . | tar -xf - -C /root/repo
    cd /root/repo
    export -f e2e probe probecodec probeslow c3 search grid60 ratio stage
    export HELDOUT_EP60 PYTHONPATH=/tmp/site:/root/repo/src PYTHONUNBUFFERED=1
    shift; k=0; n=$(nvidia-smi -L | grep -c '^GPU')
    for c in "$@"; do
      CUDA_VISIBLE_DEVICES=$((k % n)) setsid bash -c "$c; echo chain-end" > "/root/results/logs/chain-$k-${c// /_}.log" 2>&1 < /dev/null &
      k=$((k + 1))
    done
    sleep 5; tail -n 3 /root/results/logs/chain-*.log ;;
  poll)
    end=$(( $(date +%s) + ${2:-500} ))
    while [ "$(date +%s)" -lt "$end" ]; do
      [ "$(grep -L chain-end /root/results/logs/chain-*.log | wc -l)" -eq 0 ] && break
      sleep 10
    done
    for f in /root/results/logs/chain-*.log; do echo "== $f"; grep -v '^\s*$' "$f" | tail -n 15; done
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader ;;
  autotune)
    bash experiments/device/wheels.sh || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
    for mode in ${AUTOTUNE_MODES:-default max-autotune-no-cudagraphs}; do
      limit=$([ $mode = default ] && echo 150 || echo "${AUTOTUNE_S:-300}")
      timeout -k 5 "$limit" python3 -m nodecode.cli bench speed --models cresnet51,resnet50+decoder \
        --impls compiled --compile-mode "$mode" --compile-budget-s 600 --json "$OUT/speed-$mode.json" 2>&1 \
        | grep -v "^W[0-9]\{4\} \|^\s*$" | tail -n 12
    done ;;
  collect)   # one file ($OUT brings back at most 8): /root/results plus each stage state's runs.json (the rows of
             # finished runs, also of a stage still running) under results/state/NAME/
    for f in /root/*/runs.json; do
      d=$(basename "$(dirname "$f")"); [ "$d" = results ] && continue
      mkdir -p "/root/results/state/$d" && cp "$f" "/root/results/state/$d/"
    done
    tar --exclude='*/bundled/*.safetensors' -cf "$OUT/results.tar" -C /root results && ls -la "$OUT" ;;
  *) echo "usage: plan.sh start CHAIN...|poll [S]|autotune|collect"; exit 2 ;;
esac
