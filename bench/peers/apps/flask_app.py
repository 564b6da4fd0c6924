"""Flask peer: `gunicorn flask_app:app`. POST /predict {"instances": [{feature: value, ...}, ...]}."""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from peer_model import PeerModel

app = Flask(__name__)
model = PeerModel()


@app.post("/predict")
def predict() -> dict[str, Any]:
    body = request.get_json()
    return {"predictions": model.predict(body["instances"])}
