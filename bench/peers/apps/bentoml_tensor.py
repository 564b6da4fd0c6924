"""BentoML tensor peer: `bentoml serve bentoml_tensor:TensorService`. POST /predict {"instances": [8x8 lists, ...]}.

Adaptive batching (`@bentoml.api(batchable=True)` on an np.ndarray, batch dimension 0): requests that arrive
together are concatenated into one framework call (apps/peer_tensor.py) and the list of answers is cut back per
request by BentoML. max_batch_size 64 (two c=32 rounds' worth of instances) and max_latency_ms 1000 (no 503s
from the latency budget on a shared machine).
"""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np
from peer_tensor import TensorModel


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class TensorService:
    def __init__(self) -> None:
        self.model = TensorModel()

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=1000)  # type: ignore[untyped-decorator]
    def predict(self, instances: np.ndarray) -> list[dict[str, Any]]:
        return self.model.answers(np.asarray(instances, dtype=np.float32))
