#!/usr/bin/env bash
# Run bench/gpu_check.py on a machine that has a copy of this repository but not radforge installed
# (docs/BENCHMARKS.md, "GPU check"): the wheels in .whl/ (what the check imports that such a machine
# lacks: pydantic, mosaicml-streaming and their compression modules) go into /tmp/site, and
# radforge's import namespace is laid out as links in /tmp/ns, as `make lint` does for mypy.
#
#   bench/gpu_check.sh OUT_DIR [--budget-s 420] [--phases precision,recipes] [--dry-run]
#   BENCH_MODULE=bench.pretrain_quality bench/gpu_check.sh OUT_DIR --device cuda --set KEY=VALUE
#     (another bench module in the same environment: its arguments as given, no --out added)
set -euo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR [gpu_check args]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
if ! "$python" -c "import torch" 2>/dev/null && [ -x /opt/torch/.venv/bin/python ]; then
  python=/opt/torch/.venv/bin/python  # the GPU machines' torch environment
fi
site=${GPU_CHECK_SITE:-/tmp/site}
ns=${GPU_CHECK_NS:-/tmp/ns}
shopt -s nullglob
wheels=("${GPU_CHECK_WHEELS:-.whl}"/*.whl)
if ((${#wheels[@]})); then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
else
  echo "gpu_check.sh: no wheels in $repo/.whl (fine if pydantic and mosaicml-streaming are installed)" >&2
fi
rm -rf "$ns"
mkdir -p "$ns/radforge"
for p in radforge/*; do ln -s "$repo/$p" "$ns/radforge/"; done
for s in ingest sharder trainer services; do ln -s "$repo/$s" "$ns/radforge/$s"; done
ln -s "$repo/bench" "$ns/bench"
# from $ns, not the repository root: there the core folder radforge/ would shadow the namespace
cd "$ns"
export PYTHONPATH="$ns:$site${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${BENCH_MODULE:-}" ]; then
  PYTHONUNBUFFERED=1 exec "$python" -m "$BENCH_MODULE" "$@"
fi
PYTHONUNBUFFERED=1 exec "$python" -m bench.gpu_check --out "$out" "$@"
