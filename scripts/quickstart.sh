#!/usr/bin/env bash
# Set up ngconvert and run the main job on the built-in example, on local cores.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e .
ngconvert example data/
ngconvert convert data/phantom.nii.gz out/phantom --overwrite
ngconvert convert data/phantom_labels.nii.gz out/phantom_labels --overwrite
ngconvert stats out/phantom
ngconvert stats out/phantom_labels
