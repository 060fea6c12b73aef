#!/usr/bin/env bash
# One device call of the codec-at-scale session (experiments/codec/scale.py). Every call: install the carried wheels
# once, unpack the carried dataset shards once (a marker per shard), then:
#   start MIN [ARGS]  launch the whole pipeline in the background (setsid: it outlives the call) with MIN wall minutes,
#                ARGS passed to scale.py all (e.g. --to-pixel-samples 151e9 --study-min 0 --no-downstream)
#   poll SEC     wait SEC seconds, print the pipeline's status; small results and fp16 snapshots of the runs come back
#   final        print the status; every result (weights included) comes back in $OUT as tars of <= 15 MiB
#   (no verb)    only unpack data; `ready-train` / `ready-camvid` mark those data sets complete for the pipeline
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
bash experiments/device/wheels.sh || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p /root/data /root/res /root/marks
for t in .device-data/*.tar; do
  [ -f "$t" ] || continue
  m=/root/marks/$(basename "$t" .tar)
  [ -f "$m" ] || { tar -xf "$t" -C /root/data && touch "$m" && echo "unpacked $t"; }
done
for v in "$@"; do case $v in ready-train) touch /root/marks/train-ready ;; ready-camvid) touch /root/marks/camvid-ready ;; esac; done
case ${1:-} in
  start) nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
         setsid nohup python3 experiments/codec/scale.py all --bench-quick --reserve-min 5 --deadline-min "$2" "${@:3}" --wait-train /root/marks/train-ready \
           --wait-camvid /root/marks/camvid-ready > /root/res/pipeline.log 2>&1 < /dev/null &
         sleep 20; cat /root/res/pipeline.log ;;
  poll)  sleep "$2"; python3 experiments/codec/scale.py status; rm -rf /root/res/snap; python3 experiments/codec/scale.py snapshot
         (cd /root/res && tar -cf "$OUT/light.tar" --exclude=weights --exclude=gpu_kodak .) ;;
  final) python3 experiments/codec/scale.py status; python3 experiments/codec/scale.py pack --out "$OUT"; ls -la "$OUT" ;;
esac
df -h /root | tail -1
