"""OpenAPI 3.1 document for a project, generated from the contract's input schema."""

from __future__ import annotations

from typing import Any

from mlship import __version__
from mlship.contract import Contract, Feature, TensorSpec

_JSON_TYPES = {"float": "number", "int": "integer", "str": "string", "bool": "boolean"}


def feature_schema(feature: Feature) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES[feature.type]}
    if feature.description:
        schema["description"] = feature.description
    if feature.enum is not None:
        schema["enum"] = list(feature.enum)
    if feature.minimum is not None:
        schema["minimum"] = feature.minimum
    if feature.maximum is not None:
        schema["maximum"] = feature.maximum
    return schema


_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "uint8": (0, 255)}


def tensor_schema(spec: TensorSpec) -> dict[str, Any]:
    """One tensor instance: a nested array of the instance shape, or {b64: PNG} for image inputs."""
    leaf: dict[str, Any] = {"type": "number" if spec.dtype.startswith("float") else "integer"}
    if spec.dtype in _INT_BOUNDS:
        leaf["minimum"], leaf["maximum"] = _INT_BOUNDS[spec.dtype]
    schema = leaf
    for size in reversed(spec.instance_shape):
        schema = {"type": "array", "items": schema, "minItems": size, "maxItems": size}
    schema["description"] = f"{spec.dtype} array of shape {list(spec.instance_shape)}"
    if spec.image is None:
        return schema
    png = {"type": "object", "properties": {"b64": {
        "type": "string", "contentEncoding": "base64", "contentMediaType": "image/png",
        "description": f"a PNG, converted to {'grayscale' if spec.image.channels == 1 else 'RGB'}, resized and "
                       f"scaled from 0..255 to {list(spec.image.scale)}"}},
        "required": ["b64"], "additionalProperties": False}
    return {"oneOf": [schema, png]}


def instance_schema(contract: Contract) -> dict[str, Any]:
    if contract.input.tensor is not None:
        return {"type": "object", "properties": {"input": tensor_schema(contract.input.tensor)},
                "required": ["input"], "additionalProperties": False}
    feats = contract.input.features
    return {
        "type": "object",
        "properties": {name: feature_schema(f) for name, f in feats.items()},
        "required": list(feats),
        "additionalProperties": False,
    }


def row_schema(contract: Contract) -> dict[str, Any]:
    """One instance as an array of values in the order of input.features."""
    feats = contract.input.features
    return {"type": "array", "prefixItems": [feature_schema(f) for f in feats.values()], "items": False,
            "minItems": len(feats), "maxItems": len(feats),
            "description": "values in feature order: " + ", ".join(feats)}


def prediction_schema(contract: Contract) -> dict[str, Any]:
    if contract.task == "regression":
        return {"type": "object", "properties": {"value": {}}, "required": ["value"]}
    props: dict[str, Any] = {"label": {"type": "string"}}
    props["probabilities"] = {"type": "object", "additionalProperties": {"type": "number"}}
    if contract.output.labels:
        props["label"] = {"type": "string", "enum": list(contract.output.labels)}
    return {"type": "object", "properties": props, "required": ["label"]}


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi(contract: Contract, version: str, auth: bool) -> dict[str, Any]:
    example = contract.examples[0].input if contract.examples else None
    single: dict[str, Any] = {"$ref": "#/components/schemas/Instance"}
    tensor = contract.input.tensor
    # a batch lists bare tensors, not {input: ...}; named features: objects or arrays of values in feature order
    ref = "#/components/schemas/"
    items: dict[str, Any] = ({"$ref": ref + "Tensor"} if tensor is not None else
                             {"oneOf": [{"$ref": ref + "Instance"}, {"$ref": ref + "Row"}]})
    instances = {"type": "array", "items": items, "minItems": 1, "maxItems": contract.serve.max_instances}
    batch = {"type": "object", "properties": {"instances": instances}, "required": ["instances"],
             "additionalProperties": False}
    forms = [single, batch] if tensor is not None else [single, batch, {**instances, "description": (
        "a bare array of instances, the same as {instances: [...]}")}]
    body: dict[str, Any] = {"schema": {"oneOf": forms}}
    if example is not None:
        batch_example = [example["input"]] if tensor is not None else [example]
        body["examples"] = {"one": {"value": example}, "batch": {"value": {"instances": batch_example}}}
        if tensor is None:
            values = [example.get(name) for name in contract.input.features]
            body["examples"]["rows"] = {"value": [values]}
    predict_op: dict[str, Any] = {
        "summary": f"Predict with {contract.name}",
        "operationId": "predict",
        "requestBody": {"required": True, "content": {"application/json": body}},
        "responses": {
            "200": {
                "description": "One prediction for a bare instance; {predictions: [...]} for instances "
                               "(also for a bare array of them).",
                "content": {"application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/Prediction"},
                    {"type": "object", "properties": {"predictions": {  # exactly one branch matches (oneOf)
                        "type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}},
                     "required": ["predictions"], "additionalProperties": False},
                ]}}},
            },
            "401": _error("Missing or wrong API key."),
            "413": _error("Request body too large."),
            "422": _error("Invalid input: `detail` lists each field path, expected and got."),
            "503": _error("Not ready yet, or overloaded (see Retry-After)."),
            "504": _error("The prediction took longer than the timeout."),
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": contract.name,
            "version": version,
            "description": f"{contract.task} model served by mlship {__version__} ({contract.runtime}).",
        },
        "paths": {
            "/predict": {"post": predict_op},
            "/metadata": {"get": {"summary": "Model metadata", "responses": {"200": {"description": "OK"}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: 200 once the model is loaded and warmed up",
                                "security": [], "responses": {"200": {"description": "ready"},
                                                              "503": {"description": "not ready"}}}},
        },
        "components": {
            "schemas": {
                "Instance": instance_schema(contract),
                "Prediction": prediction_schema(contract),
                "Error": {"type": "object", "properties": {"error": {"type": "string"},
                                                            "message": {"type": "string"},
                                                            "detail": {"type": "array"}}},
            }
        },
    }
    if tensor is not None:
        doc["components"]["schemas"]["Tensor"] = tensor_schema(tensor)
    else:
        doc["components"]["schemas"]["Row"] = row_schema(contract)
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
