"""Pinned per-step losses (``tests/golden_losses.json``), torchtune-style: a change that shifts
every run alike (a loss normaliser, an initialisation, a data order) fails here even when every
equivalence test still holds. After an intended change, re-pin with
``DISTREC_UPDATE_GOLDEN=1 pytest <the test>`` and say why in the commit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FILE = Path(__file__).with_name("golden_losses.json")
RTOL = 1e-5


def check(name: str, losses) -> None:
    values = [float(v) for v in losses]
    pinned = json.loads(FILE.read_text()) if FILE.exists() else {}
    if os.environ.get("DISTREC_UPDATE_GOLDEN"):
        pinned[name] = values
        FILE.write_text(json.dumps(pinned, indent=2, sort_keys=True) + "\n")
        return
    assert name in pinned, f"no golden losses for {name!r} in {FILE}; pin them with DISTREC_UPDATE_GOLDEN=1"
    np.testing.assert_allclose(values, pinned[name], rtol=RTOL, err_msg=f"golden losses of {name}")
