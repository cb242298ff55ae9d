#!/usr/bin/env bash
# Builds one venv per serving peer, bench/.venv-<peer>/, for bench/serving.py. Usage: bash bench/setup_peers.sh [peer...]
# Each venv holds the peer, the runtime pins and jmvae (editable, without its own web stack), all pinned by
# bench/requirements-peers.txt; py-spy goes into the main .venv. TorchServe also needs Java 17
# (apt-get install -y openjdk-17-jre-headless).
set -euo pipefail
cd "$(dirname "$0")/.."
pins=bench/requirements-peers.txt
runtime=(torch numpy pillow pydantic safetensors opencv-python-headless prometheus-client pydantic-settings python-multipart)
declare -A packages=([litserve]="litserve" [bentoml]="bentoml" [torchserve]="torchserve torch-model-archiver pyyaml")
peers=("$@")
[[ ${#peers[@]} -gt 0 ]] || peers=(litserve bentoml torchserve)
for peer in "${peers[@]}"; do
  venv=bench/.venv-$peer
  python3 -m venv "$venv"
  # shellcheck disable=SC2086  # the package list splits on purpose
  "$venv/bin/pip" install -q -c "$pins" ${packages[$peer]} "${runtime[@]}"
  "$venv/bin/pip" install -q --no-deps -e .
done
.venv/bin/pip install -q -c "$pins" py-spy
command -v java >/dev/null || echo "TorchServe needs Java 17: apt-get install -y openjdk-17-jre-headless" >&2
