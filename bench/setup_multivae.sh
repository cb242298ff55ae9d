#!/usr/bin/env bash
# Builds bench/.venv-multivae/ for the MultiVae side of bench/train_speed.py. Usage: bash bench/setup_multivae.sh
# jmvae goes in editable and without its dependencies: bench/multivae_jmvae.py wraps our networks (jmvae.model needs
# only torch and pydantic, which MultiVae brings), so both trainers run exactly the same architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=bench/.venv-multivae
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r bench/requirements-multivae.txt
"$venv/bin/pip" install -q --no-deps -e .
