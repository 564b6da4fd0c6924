"""LitServe tensor peer: `python litserve_tensor.py PORT`. POST /predict {"instances": [8x8 nested lists, ...]}.

One LitAPI with batching: `max_batch_size` ($PEER_MAX_BATCH, default 32) requests, waiting at most
`batch_timeout` ($PEER_BATCH_TIMEOUT seconds, default 0.001) for more. A request may hold several instances, so
`batch` keeps the per-request arrays, `predict` stacks them into one framework call and cuts the answers back per
request, and `unbatch` hands each request its own list. One inference worker on the CPU, one API server process
(LitServe's own layout: the HTTP process passes requests to the worker over a queue: ZeroMQ with fast_queue,
$PEER_FAST_QUEUE=1 by default); access log off.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import litserve as ls
import numpy as np
from peer_tensor import TensorModel


class TensorAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = TensorModel()

    # no annotation on `request`: LitServe then reads the body as JSON, with no request model (its usual form;
    # with `from __future__ import annotations` an annotation here would reach FastAPI as an unresolved string)
    def decode_request(self, request) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.asarray(request["instances"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs

    def predict(self, x: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        answers = self.model.answers(np.concatenate(x))
        out, start = [], 0
        for part in x:
            out.append(answers[start:start + len(part)])
            start += len(part)
        return out

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": output}


if __name__ == "__main__":
    api = TensorAPI(max_batch_size=int(os.environ.get("PEER_MAX_BATCH", "32")),
                    batch_timeout=float(os.environ.get("PEER_BATCH_TIMEOUT", "0.001")))
    # fast_queue: ZeroMQ between the HTTP process and the worker, LitServe's setting for > 100 req/s (the default
    # multiprocessing queues answered a lone torch-digits request in ~20 ms here)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1,
                          fast_queue=os.environ.get("PEER_FAST_QUEUE", "1") == "1")
    server.run(host="127.0.0.1", port=int(sys.argv[1]), num_api_servers=1, log_level="warning",
               generate_client_file=False, access_log=False)
