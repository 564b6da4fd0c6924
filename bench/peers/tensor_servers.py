"""The peers of the tensor suite (suite_tensor.py): mlship compiled and native, and the framework behind FastAPI,
BentoML (adaptive batching) and LitServe (batching). Every framework peer runs apps/peer_tensor.py's TensorModel
and is sent `{"instances": [8x8 nested lists]}`; mlship gets a bare `{"input": image}` for one instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serve_bench import HOST
from servers import BentoML, Launch, Mlship, Model, Peer, _dumps


class MlshipTensor(Mlship):
    def __init__(self, native: bool = False) -> None:
        super().__init__(native)
        self.config = ("python -m mlship.serving " + ("mlship-native.yaml (serve.compile: off: the framework, "
                       "batched)" if native else "mlship.yaml (compiled to ONNX and checked beforehand, as "
                       "`mlship build` does; onnxruntime, batched)") + "; {input} for 1 instance, else {instances}")

    def body(self, model: Model, batch: list[Any]) -> bytes:
        return _dumps({"input": batch[0]} if len(batch) == 1 else {"instances": batch})


def instances_body(batch: list[Any]) -> bytes:
    return _dumps({"instances": batch})


class TensorPeer(Peer):
    """A peer that runs apps/peer_tensor.py on the file $PEER_MODEL names."""

    def body(self, model: Model, batch: list[Any]) -> bytes:
        return instances_body(batch)

    def env(self, model: Model, work: Path) -> dict[str, str]:
        return {"PEER_MODEL": str(model.artifact), "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
                "HOME": str(work)}


class FastAPITensor(TensorPeer):
    name = "fastapi"
    venv = "fastapi-tensor"
    config = ("async FastAPI endpoint under uvicorn (1 worker, uvloop + httptools, --no-access-log); pydantic "
              "list[list[list[float]]] -> float32 array -> one framework call per request (torch.jit.load + "
              "inference_mode, 1 thread / keras.saving.load_model + tf.function)")

    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        return Launch([str(python), "-m", "uvicorn", "fastapi_tensor:app", "--host", HOST, "--port", str(port),
                       "--workers", "1", "--no-access-log"], cwd=work / "apps", env=self.env(model, work))


class BentoMLTensor(BentoML):
    """apps/bentoml_tensor.py: always batchable (the sklearn BentoML peer's launch, another service)."""

    venv = "bentoml-tensor"
    service = "bentoml_tensor:TensorService"

    def __init__(self) -> None:
        super().__init__(batchable=True)
        self.config = ("bentoml serve, @bentoml.service(workers=1), sync @bentoml.api(batchable=True, batch_dim=0, "
                       "max_batch_size=64, max_latency_ms=1000) on an np.ndarray (adaptive batching); access log off")

    def body(self, model: Model, batch: list[Any]) -> bytes:
        return instances_body(batch)


class LitServeTensor(TensorPeer):
    name = "litserve"
    venv = "litserve"
    config = ("LitServer(accelerator='cpu', 1 worker, fast_queue=True: ZeroMQ), 1 API server process, "
              "LitAPI(max_batch_size=32, batch_timeout=0.001): a batch of requests -> one framework call; body read "
              "as JSON with no request model; access log off")

    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        return Launch([str(python), "litserve_tensor.py", str(port)], cwd=work / "apps", env=self.env(model, work))


TENSOR_PEERS: dict[str, Peer] = {p.name: p for p in (
    MlshipTensor(), MlshipTensor(native=True), FastAPITensor(), BentoMLTensor(), LitServeTensor())}
DEFAULT_TENSOR_PEERS = list(TENSOR_PEERS)
