"""Pick the Keras backend before Keras is imported.

Keras 3 reads ``KERAS_BACKEND`` once, at import. When it is unset, covidxray keeps the backend
named in ``~/.keras/keras.json`` if that backend is installed (Keras writes that file with
``tensorflow`` on first import, installed or not), and otherwise picks the first installed of
TensorFlow, PyTorch and JAX: the order of their measured training speed on a laptop CPU (63.9,
32.8 and 29.0 images/s for DarkCovidNet at 256x256 on a 2-core machine; README, Speed). Set ``KERAS_BACKEND=jax``
(or ``torch``, ``tensorflow``) to choose.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

#: Keras backends in the order covidxray prefers them; each is also the name of its Python module.
PREFERENCE = ("tensorflow", "torch", "jax")


def _installed(backend: str) -> bool:
    try:
        return importlib.util.find_spec(backend) is not None
    except (ImportError, ValueError):  # a dotted or empty name from a hand-edited keras.json
        return False


def _keras_json_backend() -> str | None:
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        return json.loads((keras_home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError):
        return None


def choose_backend() -> str:
    """Set ``KERAS_BACKEND`` when nothing chose one, and return the backend in force."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    configured = _keras_json_backend()
    if configured and _installed(configured):
        return configured
    for backend in PREFERENCE:
        if _installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return backend
    raise ImportError(
        "covidxray needs a Keras backend: pip install 'covidxray[tensorflow]' "
        "(or [jax], [torch])"
    )
