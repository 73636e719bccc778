#!/usr/bin/env bash
# timm's own model tests (tests/test_models.py from the sdist of the installed timm) on the se_plugin_* models.
#
#   tools/timm_conformance.sh           CI subset: one model of each block kind, every marker timm's CI runs
#   tools/timm_conformance.sh --all     the same tests on every se_plugin_* model (2042 tests: 60 min on 2 quiet cores)
#   tools/timm_conformance.sh --all -m ""   also timm's unmarked tests (FX+TorchScript, the slow prune contract)
# On a busy machine add -p no:timeout: timm's per-test timeouts (120 s) then measure the load, not the model.
# Extra arguments go to pytest (e.g. -n 4). TIMM_TESTS_DIR keeps the unpacked sdist between runs.
# SE_MODELS="se_plugin_a se_plugin_b" tools/timm_conformance.sh   the same tests on the models named.
# CHUNK=N: models per pytest run (default 40; each run starts fresh workers, so memory does not pile up).
# `TORCH_BACKEND=se_plugins` is timm's own hook for importing a module before the tests collect their models.
set -euo pipefail
all=0
if [[ "${1:-}" == "--all" ]]; then all=1; shift; fi
version=$(python -c "import timm; print(timm.__version__)")
work="${TIMM_TESTS_DIR:-$(mktemp -d)}"
src="$work/timm-$version"
if [[ ! -f "$src/tests/test_models.py" ]]; then
  python -m pip download --quiet --no-deps --no-binary :all: "timm==$version" -d "$work"
  tar -xzf "$work/timm-$version.tar.gz" -C "$work"
fi
if [[ -n "${SE_MODELS:-}" ]]; then
  models="$SE_MODELS"
elif [[ $all == 1 ]]; then
  models=$(python -c "import timm, se_plugins; print(' '.join(timm.list_models('se_plugin_*')))")
else
  # basic block, bottleneck, ResNet-D, ResNet-T, ResNeXt, wide, AA, blur; then one small arch of the other families
  # (the heavy ones -- VGG, DenseNet, Inception, Xception -- only in --all / SE_MODELS runs: CI time; Res2Net's
  # smallest is here, its block runs our forward)
  models="se_plugin_resnet18 se_plugin_resnet50 se_plugin_resnet26d se_plugin_resnet10t se_plugin_resnext50_32x4d
          se_plugin_wide_resnet50_2 se_plugin_resnetaa34d se_plugin_resnetblur18
          se_plugin_resnetv2_18 se_plugin_mobilenetv2_050 se_plugin_regnetx_002 se_plugin_efficientnet_es
          se_plugin_dla46_c se_plugin_dpn48b se_plugin_hrnet_w18_small se_plugin_cs3darknet_s se_plugin_repvgg_a0
          se_plugin_convnext_atto se_plugin_mobilenetv4_conv_small se_plugin_res2net50_14w_8s"
fi
markers=(-m "base or forward or backward or cfg or cfg_nonstd or torchscript or features or fxforward or fxbackward")

run_chunk() {  # timm's tests on the models given
  local selection="" exempt="" m
  for m in "$@"; do
    selection+="${selection:+ or }$m]"  # test ids end with "<model>]"
    # timm exempts some families by name (EXCLUDE_JIT_FILTERS; the prune contract's partial branches): the same for
    # their twins, whose names start with se_plugin_ and so miss timm's patterns
    case "${m#se_plugin_}" in
      hrnet*) exempt+=" and not (($m]) and (torchscript or prune_intermediate_layers_contract))" ;;
      densenet*|selecsls*) exempt+=" and not (($m]) and torchscript)" ;;
      inception_v3*|inception_v4*|inception_resnet_v2*) exempt+=" and not (($m]) and test_model_forward_features)" ;;
    esac
  done
  TORCH_BACKEND=se_plugins HF_HUB_OFFLINE=1 python -m pytest tests/test_models.py -q -p no:cacheprovider \
    -k "($selection) and not test_model_load_pretrained and not test_model_features_pretrained$exempt" "${markers[@]}" \
    -n 2 "${extra[@]}"
}

# Chunks of CHUNK models (default 40), each in fresh pytest workers: a worker that has built a thousand models holds
# many GB (allocator fragmentation, seen: a worker OOM-killed at 12.7 GB after ~1000 models on a 24 GiB machine).
extra=("$@")
read -r -a all_models <<< "$(echo $models)"
chunk="${CHUNK:-40}"
cd "$src"
status=0
for ((i = 0; i < ${#all_models[@]}; i += chunk)); do
  run_chunk "${all_models[@]:i:chunk}" || status=$?
done
exit $status
