"""Runs cntscope's PyTorch tracer (``python/cntscope/torch_to_spec.py``) from
a checkout, without building or installing cntscope (its package needs the
native module; the tracer needs only torch). As a script it is the tracer's
command line; imported (with ``python/`` on the path) it is the tracer's
module, ``from torch_to_spec import spec_from_module``.

    python python/torch_to_spec.py torchvision.models.resnet18 --input 3,224,224 -o resnet18.toml
"""

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("torch_to_spec", Path(__file__).with_name("cntscope") / "torch_to_spec.py")
_module = importlib.util.module_from_spec(_spec)
sys.modules["torch_to_spec"] = _module
_spec.loader.exec_module(_module)

if __name__ == "__main__":
    sys.exit(_module.main())
