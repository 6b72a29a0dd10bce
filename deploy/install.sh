#!/usr/bin/env bash
# Install ich-triage, with its pinned torch build, into one Python environment.
#
# The container image runs exactly these steps (deploy/Dockerfile, builder stage), CI runs them with
# --editable --extras dev (.ci/run), and tests/integration/test_deploy.py replays them in a fresh virtual
# environment, so the image's install cannot drift from what is tested.
#
# Usage: deploy/install.sh [--variant cpu|cuda] [--python PY] [--editable] [--extras LIST] [SOURCE]
#   SOURCE          the project folder (default: the checkout holding this script) or a built wheel
#   --variant       torch build: cpu (default) or cuda (NVIDIA GPU nodes)
#   --python        interpreter whose environment receives the packages (default: $PYTHON or python3)
#   --editable      pip install -e (development checkouts, CI)
#   --extras LIST   comma-separated optional-dependency groups of pyproject.toml, e.g. dev
#
# Environment (a flag wins over its variable):
#   ICH_TORCH_VARIANT    cpu | cuda                                        (default cpu)
#   ICH_TORCH_VERSION    torch release; must match pyproject.toml's pin    (default 2.13.0)
#   ICH_TORCH_INDEX_URL  index the torch wheel comes from. Unset: https://download.pytorch.org/whl/cpu for cpu,
#                        PyPI for cuda (PyPI's Linux x86_64 torch wheels are the CUDA builds). Set but empty:
#                        only pip's own configuration (index-url, find-links, a local wheel cache).
#   PYTHON               as --python
#
# torch is installed first and pinned exactly (a loose requirement pulls the multi-GB CUDA build), then
# verified: the cpu variant must be a build without CUDA, the cuda variant a build with it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
variant="${ICH_TORCH_VARIANT:-cpu}"
torch_version="${ICH_TORCH_VERSION:-2.13.0}"
python="${PYTHON:-python3}"
editable=0
extras=""
source_path=""

die() { echo "install.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) variant="${2:?--variant needs cpu or cuda}"; shift 2 ;;
        --variant=*) variant="${1#*=}"; shift ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --python=*) python="${1#*=}"; shift ;;
        --editable|-e) editable=1; shift ;;
        --extras) extras="${2:?--extras needs a list}"; shift 2 ;;
        --extras=*) extras="${1#*=}"; shift ;;
        -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z "$source_path" ]] || die "only one SOURCE may be given"; source_path="$1"; shift ;;
    esac
done
source_path="${source_path:-$(dirname "$here")}"

case "$variant" in
    cpu|cuda) ;;
    *) die "--variant must be cpu or cuda, got '$variant'" ;;
esac
[[ -e "$source_path" ]] || die "source not found: $source_path"
if [[ -d "$source_path" && ! -f "$source_path/pyproject.toml" ]]; then
    die "$source_path has no pyproject.toml"
fi
if [[ "$editable" == 1 && ! -d "$source_path" ]]; then
    die "--editable needs a project folder, not $source_path"
fi
command -v "$python" >/dev/null 2>&1 || [[ -x "$python" ]] || die "python not found: $python"

pip=("$python" -m pip install --disable-pip-version-check)
if [[ -n "${ICH_PIP_ARGS:-}" ]]; then
    # Extra pip options for both steps (e.g. --find-links a wheel cache); word-split on purpose.
    read -r -a extra_pip_args <<<"$ICH_PIP_ARGS"
    pip+=("${extra_pip_args[@]}")
fi

# 1. torch, pinned. On x86_64 the CPU wheels carry the +cpu local version; asking for it explicitly makes a
#    missing CPU wheel an error instead of a silent multi-GB CUDA download.
torch_spec="torch==${torch_version}"
if [[ "$variant" == cpu && "$(uname -m)" == x86_64 ]]; then
    torch_spec="torch==${torch_version}+cpu"
fi
if [[ -z "${ICH_TORCH_INDEX_URL+set}" ]]; then
    if [[ "$variant" == cpu ]]; then
        ICH_TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
    else
        ICH_TORCH_INDEX_URL=""
    fi
fi
torch_index=()
if [[ -n "$ICH_TORCH_INDEX_URL" ]]; then
    # The PyTorch index also serves torch's own dependencies (filelock, sympy, ...); PyPI stays reachable
    # as an extra index for anything it lacks.
    torch_index=(--index-url "$ICH_TORCH_INDEX_URL" --extra-index-url "https://pypi.org/simple")
fi
echo "install.sh: installing $torch_spec ($variant) into $("$python" -c 'import sys; print(sys.prefix)')"
"${pip[@]}" "${torch_index[@]}" "$torch_spec"

"$python" - "$variant" "$torch_version" <<'EOF'
import sys

import torch

variant, wanted = sys.argv[1], sys.argv[2]
release = torch.__version__.split("+")[0]
if release != wanted:
    sys.exit(f"install.sh: expected torch {wanted}, got {torch.__version__}")
if variant == "cpu" and torch.version.cuda is not None:
    sys.exit(f"install.sh: expected a CPU build of torch, got {torch.__version__} (CUDA {torch.version.cuda})")
if variant == "cuda" and torch.version.cuda is None:
    sys.exit(f"install.sh: expected a CUDA build of torch, got {torch.__version__}")
print(f"install.sh: torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU'})")
EOF

# 2. The application. Constrain torch to the build just installed so no dependency can swap it.
installed_torch="$("$python" -c 'import torch; print(torch.__version__)')"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==${installed_torch}" >"$constraints"

target="$source_path"
if [[ -n "$extras" ]]; then
    target="${source_path}[${extras}]"
fi
if [[ "$editable" == 1 ]]; then
    "${pip[@]}" --constraint "$constraints" --editable "$target"
else
    "${pip[@]}" --constraint "$constraints" "$target"
fi

# 3. Smoke check: the packages import and the console script is on the environment's PATH.
# (from / so that a source checkout in the working directory cannot shadow the installed packages)
(cd / && "$python" -c 'import dicom_io, monai_app; print("install.sh: ich-triage installed at", monai_app.__path__[0])')
bindir="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
[[ -x "$bindir/ich-triage" ]] || die "console script missing: $bindir/ich-triage"
