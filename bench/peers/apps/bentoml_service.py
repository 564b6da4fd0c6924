"""BentoML peer: `bentoml serve bentoml_service:PeerService`. POST /predict {"instances": [{...}, ...]}.

$PEER_BATCHABLE=1 turns on adaptive batching (`@bentoml.api(batchable=True)`, default batch size and
latency limits): requests that arrive together are concatenated into one `predict_proba` call.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
from peer_model import PeerModel

BATCHABLE = os.environ.get("PEER_BATCHABLE") == "1"


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class PeerService:
    def __init__(self) -> None:
        self.model = PeerModel()

    @bentoml.api(batchable=BATCHABLE)  # type: ignore[untyped-decorator]
    def predict(self, instances: list[dict[str, float]]) -> list[dict[str, Any]]:
        return self.model.predict(instances)
