#!/usr/bin/env bash
# Build the MONAI Application Package (MAP) of the ICH triage app with the MONAI Deploy App SDK's packager.
#
# `monai-deploy package APP` copies only the APP folder into the image (as /opt/holoscan/app, run as
# `python3 /opt/holoscan/app`), so this script first stages a self-contained folder:
#
#   STAGE/app/__main__.py        runs monai_app's __main__ (the HOLOSCAN_INPUT/OUTPUT/MODEL_PATH contract)
#   STAGE/app/requirements.txt   pyproject.toml's dependencies (torch pinned), installed by the packager
#   STAGE/app/monai_app/         the application (its bundled model left out: it goes to STAGE/models)
#   STAGE/app/dicom_io/          DICOM input/output
#   STAGE/models/ich-resnet50/   the model (-> /opt/holoscan/models/ich-resnet50 = HOLOSCAN_MODEL_PATH/...)
#   STAGE/docs/                  README, model card, admin guide (-> /opt/holoscan/docs)
#   STAGE/app.yaml               the MAP manifest (repo root app.yaml)
#   STAGE/package-command.txt    the packager command line
#
# then runs `monai-deploy package STAGE/app -c STAGE/app.yaml -m STAGE/models -t ich-triage:VERSION --platform x86_64`.
# Packaging needs a Docker engine with buildx, network access to NVIDIA's base images, and the `package` extra
# (pip install -e .[package]: monai-deploy-app-sdk with holoscan-cli). Staging needs none of that.
#
# Usage: deploy/package.sh [--stage-only DIR | --stage-dir DIR] [--model DIR] [--tag NAME[:TAG]]
#                          [--platform P] [-- extra monai-deploy package arguments]
#   --stage-only DIR  stage into DIR (must not exist or be empty), print the packager command, stop
#   --stage-dir DIR   stage into DIR, then package (default: a temporary folder, removed afterwards)
#   --model DIR       model artifact folder (config.json + model.pt; default: ICH_MODEL, else the bundled
#                     monai_app/models/ich-resnet50)
#   --tag NAME[:TAG]  image name (default ich-triage:VERSION, VERSION from pyproject.toml)
#   --platform P      packager platform(s) (default x86_64)
# Example: deploy/package.sh -- --output dist/      # also write the image as a tarball into dist/
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"
stage=""
stage_only=0
model="${ICH_MODEL:-$repo/monai_app/models/ich-resnet50}"
tag=""
platform="x86_64"
extra=()

die() { echo "package.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --stage-only) stage="${2:?--stage-only needs a folder}"; stage_only=1; shift 2 ;;
        --stage-dir) stage="${2:?--stage-dir needs a folder}"; shift 2 ;;
        --model) model="${2:?--model needs a folder}"; shift 2 ;;
        --tag|-t) tag="${2:?--tag needs NAME[:TAG]}"; shift 2 ;;
        --platform) platform="${2:?--platform needs a value}"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

# Version and runtime requirements come from pyproject.toml, so the MAP cannot drift from the package.
pyproject() {  # pyproject version | pyproject requirements OUT_FILE
    "$python" - "$repo/pyproject.toml" "$@" <<'EOF'
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
if sys.argv[2] == "version":
    print(project["version"])
else:
    lines = [f"# ich-triage {project['version']}: runtime dependencies from pyproject.toml (written by deploy/package.sh)"]
    with open(sys.argv[3], "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines + list(project["dependencies"])) + "\n")
EOF
}
version="$(pyproject version)"
tag="${tag:-ich-triage:$version}"

[[ -f "$model/config.json" && -f "$model/model.pt" ]] \
    || die "no model artifact in $model (expected config.json and model.pt); pass --model DIR or set ICH_MODEL"
[[ -f "$repo/app.yaml" ]] || die "missing $repo/app.yaml"

cleanup=""
if [[ -z "$stage" ]]; then
    stage="$(mktemp -d "${TMPDIR:-/tmp}/ich-triage-map.XXXXXX")"
    cleanup="$stage"
elif [[ -e "$stage" && -n "$(ls -A "$stage")" ]]; then
    die "stage folder $stage is not empty"
fi
if [[ -n "$cleanup" ]]; then
    trap 'rm -rf "$cleanup"' EXIT
fi
mkdir -p "$stage/app" "$stage/models" "$stage/docs"

copy_package() {  # copy a Python package without caches (and without the bundled models: staged separately)
    local name="$1"
    tar -C "$repo" --exclude='__pycache__' --exclude='*.pyc' --exclude="$name/models" -cf - "$name" \
        | tar -C "$stage/app" -xf -
}
copy_package monai_app
copy_package dicom_io

cat >"$stage/app/__main__.py" <<'EOF'
"""MAP entry point: the packager runs `python3 /opt/holoscan/app`, which executes this file with the folder on
sys.path, so monai_app and dicom_io import from here. Paths come from HOLOSCAN_INPUT_PATH, HOLOSCAN_OUTPUT_PATH
and HOLOSCAN_MODEL_PATH (or -i/-o/-m), exactly as `python -m monai_app`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("monai_app", run_name="__main__", alter_sys=True)
EOF

pyproject requirements "$stage/app/requirements.txt"

model_name="$(basename "$(cd "$model" && pwd)")"
mkdir -p "$stage/models/$model_name"
cp -R "$model"/. "$stage/models/$model_name/"
cp -p "$repo/app.yaml" "$stage/app.yaml"
for doc in README.md LICENSE docs/pacs-admin-guide.md docs/scale-out.md "$model/MODEL_CARD.md"; do
    src="$doc"
    [[ "$src" == /* ]] || src="$repo/$doc"
    if [[ -f "$src" ]]; then
        cp "$src" "$stage/docs/"
    fi
done

# The MAP runs as a non-root user: everything staged must be readable by all (a model exported by training is
# written 0600, and the packager's COPY keeps modes).
chmod -R u+rwX,go+rX,go-w "$stage"

cmd=(monai-deploy package "$stage/app" --config "$stage/app.yaml" --models "$stage/models" --docs "$stage/docs"
     --tag "$tag" --platform "$platform" "${extra[@]}")
printf '%q ' "${cmd[@]}" | sed 's/ $/\n/' >"$stage/package-command.txt"
echo "package.sh: staged the MAP build input in $stage"

if [[ "$stage_only" == 1 ]]; then
    echo "package.sh: to build the MAP: $(cat "$stage/package-command.txt")"
    exit 0
fi

command -v monai-deploy >/dev/null 2>&1 || die "monai-deploy not found: pip install -e '.[package]'"
command -v docker >/dev/null 2>&1 || die "docker not found: the packager builds the MAP with docker buildx"
docker info >/dev/null 2>&1 || die "no Docker engine reachable (docker info failed)"
echo "package.sh: $(cat "$stage/package-command.txt")"
"${cmd[@]}"
