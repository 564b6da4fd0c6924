"""FastAPI peer: `uvicorn fastapi_app:app`. POST /predict {"instances": [{feature: value, ...}, ...]}.

The request model is built from the model's feature names, so pydantic validates every feature as a float.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from peer_model import PeerModel
from pydantic import BaseModel, create_model

model = PeerModel()
Instance: type[BaseModel] = create_model("Instance", **{name: (float, ...) for name in model.features})  # type: ignore[call-overload]


class PredictRequest(BaseModel):
    instances: list[Instance]  # type: ignore[valid-type]


app = FastAPI()


@app.post("/predict")
async def predict(req: PredictRequest) -> dict[str, Any]:
    instances: list[BaseModel] = req.instances
    return {"predictions": model.predict([row.model_dump() for row in instances])}
