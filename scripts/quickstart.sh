#!/usr/bin/env bash
# Set up ngconvert and run the main job on the built-in example, on local cores:
# a head phantom (image), its atlas (labels + label table + multires meshes) and the same atlas assembled
# from one mask per structure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m pip install --quiet -e .
ngconvert() { python3 -m ngconvert "$@"; }   # works in a fresh venv that is not on PATH
ngconvert example data/
ngconvert convert data/phantom.nii.gz out/phantom --resume
ngconvert convert data/phantom_labels.nii.gz out/phantom_labels --labels data/phantom_labels.csv --mesh \
    --mesh-format multires --resume
ngconvert assemble data/structures out/phantom_assembled --origins data/structures_origins.csv \
    --labels data/phantom_labels.csv --resolution 1,1,1 --units mm --resume
ngconvert stats out/phantom
ngconvert stats out/phantom_labels
ngconvert check out/phantom_labels
echo "look at them in the viewer (served locally, no internet needed):"
echo "  ngconvert view out/phantom out/phantom_labels"
