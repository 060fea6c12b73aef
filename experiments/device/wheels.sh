#!/usr/bin/env bash
# The carried wheels (.whl: constriction, pytorch_msssim) into /tmp/site, once per machine; the device scripts run it
# from the repository root and put /tmp/site on PYTHONPATH.
PYTHONPATH=/tmp/site python3 -c "import constriction, pytorch_msssim" 2>/dev/null \
  || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
