# GPU check, run from the repository root on a CUDA machine (target: under 8 minutes):
#   1. an environment, the first that works of: an existing .venv whose torch sees CUDA; the
#      machine's python3 when it already holds CUDA torch and the project's needs (run from the
#      source tree, nothing installed: works offline); `python3 -m venv .venv` with
#      `pip install -e '.[dev]'`;
#   2. the trainer / config / CLI tests with MULTIDIFF_TEST_DEVICE=cuda (these decide the exit code);
#   3. the rest of the test suite on CUDA, run beside step 2 (reported with each failure's reason, time-boxed;
#      some modalities' tests may lack packages offline);
#   4. a table of training samples/s and peak memory per registered backbone, fp32 / bf16, SDPA / xformers;
#   5. benchmarks/backbones.py on CUDA, each part against its diffusers peer (tables copied to $GPU_CHECK_OUT).
# GPU_CHECK_OUT (default benchmarks/results) receives the tables; the caller keeps the log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MULTIDIFF_TEST_DEVICE=cuda
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start ))s"; }
has_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
has_needs() {  # what the trainer, its tests and the benchmark import
    PYTHONPATH="$PWD" "$1" -c "import multidiff.train.commands, multidiff.toy.data, accelerate, safetensors, yaml, tqdm, matplotlib, tensorboard, pytest" 2>/dev/null
}

echo "== environment ($(elapsed))"
# An offline GPU machine may lack some of the project's packages: wheels brought along in
# .whl/ (see the device notes in benchmarks/README.md) are unpacked into /tmp/site first.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" && echo "unpacked $(ls .whl/*.whl | wc -l) carried wheels"
fi
PY=""
if [ -x .venv/bin/python ] && has_cuda .venv/bin/python && has_needs .venv/bin/python; then
    PY=.venv/bin/python
elif command -v python3 >/dev/null && has_cuda python3 && has_needs python3; then
    echo "using the machine's python3 ($(command -v python3)) with the source tree on PYTHONPATH"
    PY=python3
else
    [ -x .venv/bin/python ] || python3 -m venv .venv
    timeout 420 .venv/bin/pip install -q --retries 1 --timeout 30 -e '.[dev]' || echo "pip install failed"
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
import torch, accelerate
print(f"python {__import__('sys').version.split()[0]}, torch {torch.__version__}, accelerate {accelerate.__version__}")
print(f"cuda available: {torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
import importlib
for name in ("diffusers", "transformers", "huggingface_hub", "torchaudio", "trimesh", "av", "librosa", "k_diffusion", "xformers"):
    try:
        print(f"  {name} {importlib.import_module(name).__version__}")
    except Exception as error:  # noqa: BLE001 - report, do not stop
        print(f"  {name}: {type(error).__name__}: {str(error)[:120]}")
EOF
has_cuda "$PY" || { echo "no CUDA device visible: nothing to check"; exit 1; }

OUTDIR="${GPU_CHECK_OUT:-benchmarks/results}"
mkdir -p "$OUTDIR"
echo "== the rest of the test suite on CUDA starts beside the trainer tests ($(elapsed))"
timeout 200 "$PY" -m pytest -q --tb=line -rfE --continue-on-collection-errors \
    --ignore=tests/test_config.py --ignore=tests/test_cli.py --ignore-glob='tests/test_train_*.py' \
    > /tmp/rest_of_suite.log 2>&1 &
rest_pid=$!

echo "== trainer, config and CLI tests on CUDA ($(elapsed))"
timeout 200 "$PY" -m pytest -q --durations=8 \
    tests/test_config.py tests/test_cli.py tests/test_train_*.py
status=$?

wait $rest_pid
rest_status=$?
echo "== the rest of the test suite on CUDA, reported only ($(elapsed))"
grep -E "^(FAILED|ERROR)|^/.*Error|passed|failed" /tmp/rest_of_suite.log | tail -60
echo "(rest of the suite: exit status $rest_status)"

echo "== FSDP on the GPU: train with sharded checkpoints, resume, read the shards whole ($(elapsed))"
rm -rf /tmp/fsdp-gpu
timeout 120 "$PY" tests/test_train_fsdp.py --worker /tmp/fsdp-gpu/a trainer.sharding=fsdp trainer.device=cuda \
    trainer.mixed_precision=bf16 > /tmp/fsdp-gpu.log 2>&1 \
  && timeout 120 "$PY" tests/test_train_fsdp.py --worker /tmp/fsdp-gpu/b trainer.sharding=fsdp trainer.device=cuda \
    trainer.mixed_precision=bf16 trainer.resume=/tmp/fsdp-gpu/a/checkpoints/ckpt-000000000064 >> /tmp/fsdp-gpu.log 2>&1 \
  && "$PY" - <<'EOF' || { tail -20 /tmp/fsdp-gpu.log; echo "FSDP on the GPU: FAILED"; }
import torch
from multidiff.train import checkpoint as ckpt
a, b = (ckpt.read_module_state(ckpt.resolve(f"/tmp/fsdp-gpu/{r}") / "ema.safetensors") for r in "ab")
same = all(torch.equal(a[k], b[k]) for k in a)
print(f"FSDP on the GPU: trained, resumed from its shards, EMA {'bit-exact' if same else 'DIFFERENT'} after resume")
EOF

echo "== training throughput ($(elapsed))"
timeout 150 "$PY" benchmarks/train_throughput.py --steps 12 --warmup 4 --timeout 40 \
    --json "$OUTDIR/train_throughput_cuda.json"

for part in audio video shapes; do
    echo "== backbones.py --part $part on CUDA ($(elapsed))"
    timeout 60 "$PY" benchmarks/backbones.py --part $part --device cuda
    cp benchmarks/results/backbones*_cuda*.md benchmarks/results/backbones*_cuda*.json "$OUTDIR"/ 2>/dev/null
done
echo "== done in $(elapsed); trainer tests exit status $status"
exit $status
