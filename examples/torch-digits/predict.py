"""The state_dict variant: build the model class and load the weights (no pickled code is run).

    # mlship.yaml
    artifact: model/digits_state.pt
    load: predict.py:load
    build: {include: [net.py]}     # the image needs the class too
"""

from __future__ import annotations

from pathlib import Path

import torch
from net import DigitsNet


def load(path: Path) -> torch.nn.Module:
    model = DigitsNet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
