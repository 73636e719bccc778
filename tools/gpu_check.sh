#!/usr/bin/env bash
# Every GPU check in one call (about 6-8 min on one H200): the CUDA tests, the benchmarks (classification train +
# infer, eager and compiled; detection and segmentation training; AMP + channels_last, batch 64 for classification)
# and a 1-epoch AMP run of the shapes detection demo. Writes OUT_DIR/gpu_check.json (every figure) and
# OUT_DIR/gpu_check.log. CPU CI never runs it.
#
#   tools/gpu_check.sh --download    # here, with pip access: the wheels a bare GPU box lacks, into .whl/ (git-ignored)
#   tools/gpu_check.sh [OUT_DIR]     # there, from the repository root (default OUT_DIR: runs/gpu_check)
#
# A bare GPU machine has PyTorch, torchvision, timm, matplotlib, tifffile, pytest (other versions than ours) but not
# omegaconf, pycocotools or segmentation-models-pytorch, and its timm may be older than the 1.0.31 se_plugins needs
# (pyproject.toml): --download fetches those for the box's Python (3.12, manylinux x86-64), and the run installs them
# with --no-index into /tmp/site, ahead of the box's own packages. se_plugins itself runs from the source tree
# (PYTHONPATH), so nothing else is installed there; the box's torch (2.11 when last seen) is within our range.
set -uo pipefail
PY="${PYTHON:-python3}"
WHEELS=(omegaconf==2.3.0 pycocotools==2.0.10 segmentation-models-pytorch==0.6.0 timm==1.0.31)
if [[ "${1:-}" == "--download" ]]; then
  set -e
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  "$PY" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3  # omegaconf's parser: sdist only
  ls .whl
  exit 0
fi
out="${1:-runs/gpu_check}"
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$log" 2>&1 || { echo "gpu_check: installing .whl/ failed (see $log)"; exit 2; }
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, remember the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$log"
  echo "$name $rc $((SECONDS - start))" >> "$out/steps.txt"
}
: > "$out/steps.txt"
bench=("$PY" -m se_plugins.benchmark --device cuda --amp --channels-last --repeats 11 --iters 5 --warmup 3)
step env 60 "$PY" -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__, torch.cuda.get_device_name())"
step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_evaluation.py -m gpu -rs
step bench_cls_eager 75 "${bench[@]}" --mode both --batch-size 64 --compare seresnet50 --json "$out/bench_cls_eager.json"
step bench_cls_compiled 150 "${bench[@]}" --mode both --batch-size 64 --compile --compare seresnet50 \
  --json "$out/bench_cls_compiled.json"
step bench_det 60 "${bench[@]}" --task detection --model fasterrcnn_se_resnet50_fpn --mode train --batch-size 8 \
  --image-size 512 --json "$out/bench_det.json"
step bench_seg 60 "${bench[@]}" --task segmentation --model se_plugin_resnet50 --mode train --batch-size 16 \
  --image-size 256 --json "$out/bench_seg.json"
step demo_det_amp 120 "$PY" -m se_plugins.cli train shapes_fasterrcnn_se_r18 --set device=cuda train.epochs=1 \
  train.amp=true train.channels_last=true train.tensorboard=false "output_dir=$out/demo_det" "data.root=$out/shapes160"
"$PY" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
result = {"steps": {}, "benchmarks": {}}
for line in (out / "steps.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    result["steps"][name] = {"exit": int(rc), "seconds": int(seconds)}
for path in sorted(out.glob("bench_*.json")):
    result["benchmarks"][path.stem] = json.loads(path.read_text())
metrics = out / "demo_det" / "metrics.jsonl"
if metrics.exists():
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    result["demo_det_amp"] = [r for r in records if r.get("type") == "eval"]
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result["steps"]))
PY
awk '$2 != 0 {bad = 1} END {exit bad}' "$out/steps.txt"  # exit 1 when any step failed
