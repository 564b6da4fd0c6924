"""FastAPI tensor peer: `uvicorn fastapi_tensor:app`. POST /predict {"instances": [8x8 nested lists, ...]}.

pydantic validates every pixel as a float; the instances become one float32 array and one framework call per
request, on the event loop as in the scikit-learn FastAPI peer (no thread hop; no batching across requests:
what a minimal hand-written server does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI
from peer_tensor import TensorModel
from pydantic import BaseModel

model = TensorModel()


class PredictRequest(BaseModel):
    instances: list[list[list[float]]]


app = FastAPI()


@app.post("/predict")
async def predict(req: PredictRequest) -> dict[str, Any]:
    return {"predictions": model.answers(np.asarray(req.instances, dtype=np.float32))}
