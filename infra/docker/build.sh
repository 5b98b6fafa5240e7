#!/usr/bin/env bash
# Builds the Loopfree images from the repository root, tagged with the project version of pyproject.toml:
#   ${IMAGE_REPO}:VERSION-gpu, ${IMAGE_REPO}:VERSION-cpu and ${IMAGE_REPO}-mlflow:MLFLOW_VERSION
# The manifests under infra/ name exactly these tags (tests/infra check it). Usage:
#   infra/docker/build.sh                 # build all three
#   IMAGE_REPO=123456789012.dkr.ecr.us-east-1.amazonaws.com/loopfree PUSH=1 infra/docker/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

pin() {  # the version pyproject.toml pins for a package, e.g. pin mlflow -> 3.17.2
    sed -n "s/^ *\"$1\(\[[^]]*\]\)\?==\([^\"]*\)\".*/\2/p" pyproject.toml | head -n 1
}
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
IMAGE_REPO="${IMAGE_REPO:-loopfree}"
DOCKER="${DOCKER:-docker}"
TAGS=()

build() {  # build VARIANT BASE_IMAGE TORCH_INDEX_URL DS_BUILD_SHM_COMM
    local tag="${IMAGE_REPO}:${VERSION}-$1"
    "$DOCKER" build -f infra/docker/Dockerfile -t "$tag" \
        --build-arg BASE_IMAGE="$2" --build-arg TORCH_INDEX_URL="$3" --build-arg DS_BUILD_SHM_COMM="$4" \
        --build-arg TORCH_VERSION="$(pin torch)" --build-arg DEEPSPEED_VERSION="$(pin deepspeed)" .
    TAGS+=("$tag")
}

build gpu nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 "" 0
build cpu ubuntu:22.04 https://download.pytorch.org/whl/cpu 1

mlflow_tag="${IMAGE_REPO}-mlflow:$(pin mlflow)"
"$DOCKER" build -f infra/docker/mlflow.Dockerfile -t "$mlflow_tag" \
    --build-arg MLFLOW_VERSION="$(pin mlflow)" --build-arg BOTO3_VERSION="$(pin boto3)" .
TAGS+=("$mlflow_tag")

if [[ "${PUSH:-0}" == 1 ]]; then
    for tag in "${TAGS[@]}"; do "$DOCKER" push "$tag"; done
fi
printf 'built %s\n' "${TAGS[@]}"
