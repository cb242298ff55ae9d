#!/usr/bin/env bash
# Run here, before bench/gpu.sh goes to the device: fills .whl/ (ignored by git, carried by the device tool) with
# what the device's Python 3.12 lacks for jmvae, its tests and MultiVae (the device has torch, numpy, pillow,
# opencv, safetensors, httpx, pytest, uvloop, scipy, torchvision, ...: /work/.library/device/KINDS.md); jmvae
# itself is linked from the checkout there by bench/gpu.sh. Versions: ours as installed in .venv (what the tests
# ran with here), MultiVae's from bench/requirements-multivae.txt. Usage: bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl && mkdir .whl
ours="pydantic pydantic_core annotated-types typing-inspection pydantic-settings python-dotenv fastapi starlette
annotated-doc anyio uvicorn httptools python-multipart fastapi-offline opentelemetry-api"
multivae="multivae pythae nltk defusedxml"
pins=()
for name in $ours; do
    pins+=("$(.venv/bin/pip freeze 2>/dev/null | grep -i "^${name//[-_]/[-_]}==")")
done
for name in $multivae; do
    pins+=("$(grep -i "^${name}==" bench/requirements-multivae.txt)")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls .whl
du -sh .whl
