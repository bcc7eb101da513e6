"""Optional dependencies: looked for only when a feature needs one, else one line naming the extra.

vivace's own dependencies stay few (README, "Dependencies"); ONNX export and TensorBoard logging
need packages a plain install leaves out, installed with the extra of the same name.
"""
from __future__ import annotations

import importlib.util


def require(package: str, feature: str, extra: str) -> None:
    """RuntimeError "<feature> needs the <package> package: pip install 'vivace[<extra>]'" when
    `package` cannot be imported. Only looks it up (no import): a cheap check before heavy work."""
    if importlib.util.find_spec(package) is None:
        raise RuntimeError(f"{feature} needs the {package} package: pip install 'vivace[{extra}]'")
