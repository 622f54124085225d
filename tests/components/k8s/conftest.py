import sys
from pathlib import Path

# tests/components holds the shared mock-runtime harness (_pulumi_harness.py); this folder the
# Kubernetes-specific mocks (_k8s_harness.py).
_HERE = Path(__file__).resolve().parent
for _path in (_HERE.parent, _HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
