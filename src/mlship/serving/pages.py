"""The two HTML pages: ``/`` (a form to try the model) and ``/docs`` (model card + API reference).

Self-contained (no CDN), and every value from the contract is escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

from mlship.contract import Contract, TensorSpec, shape_text

_STYLE = """body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
label{display:block;margin:.4rem 0}input,select{margin-left:.5rem;padding:.2rem}
button{margin-top:.8rem;padding:.4rem 1rem}pre{background:#f4f4f4;padding:.8rem;overflow:auto}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}"""

_SCRIPT = """const schema = JSON.parse(document.getElementById('schema').textContent);
document.getElementById('f').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const inst = {};
  for (const [name, type] of Object.entries(schema)) {
    const el = document.getElementById('in-' + name);
    inst[name] = type === 'bool' ? el.checked : (type === 'float' || type === 'int') ? Number(el.value) : el.value;
  }
  const headers = {'Content-Type': 'application/json'};
  const key = document.getElementById('key');
  if (key && key.value) headers['Authorization'] = 'Bearer ' + key.value;
  const out = document.getElementById('out');
  try {
    const r = await fetch('predict', {method: 'POST', headers, body: JSON.stringify(inst)});
    out.textContent = r.status + '\\n' + JSON.stringify(await r.json(), null, 2);
  } catch (e) { out.textContent = String(e); }
});"""


def _field(name: str, ftype: str, value: Any, enum: list[Any] | None) -> str:
    n = html.escape(name)
    if enum:
        opts = "".join(
            f'<option{" selected" if v == value else ""}>{html.escape(str(v))}</option>' for v in enum
        )
        return f'<label>{n}<select id="in-{n}">{opts}</select></label>'
    if ftype == "bool":
        checked = " checked" if value else ""
        return f'<label>{n}<input id="in-{n}" type="checkbox"{checked}></label>'
    kind = "number" if ftype in ("float", "int") else "text"
    step = ' step="any"' if ftype == "float" else ""
    val = "" if value is None else html.escape(str(value))
    return f'<label>{n}<input id="in-{n}" type="{kind}"{step} value="{val}" required></label>'


_TENSOR_SCRIPT = """const form = document.getElementById('f');
form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const out = document.getElementById('out');
  const file = document.getElementById('png');
  let body;
  try {
    if (file && file.files.length) {
      const url = await new Promise((ok, fail) => {
        const rd = new FileReader();
        rd.onload = () => ok(rd.result); rd.onerror = fail; rd.readAsDataURL(file.files[0]);
      });
      body = {input: {b64: String(url).split(',')[1]}};
    } else {
      body = {input: JSON.parse(document.getElementById('tensor').value)};
    }
  } catch (e) { out.textContent = 'not valid JSON: ' + e; return; }
  const headers = {'Content-Type': 'application/json'};
  const key = document.getElementById('key');
  if (key && key.value) headers['Authorization'] = 'Bearer ' + key.value;
  try {
    const r = await fetch('predict', {method: 'POST', headers, body: JSON.stringify(body)});
    out.textContent = r.status + '\\n' + JSON.stringify(await r.json(), null, 2);
  } catch (e) { out.textContent = String(e); }
});"""


def _tensor_text(spec: TensorSpec) -> str:
    text = f"{spec.dtype} array of shape {shape_text(spec.instance_shape)}"
    if spec.image is not None:
        kind = "grayscale" if spec.image.channels == 1 else "RGB"
        text += f", or a PNG ({kind}, resized, scaled to {list(spec.image.scale)})"
    return text


def _tensor_index(contract: Contract, spec: TensorSpec, version: str, auth: bool) -> str:
    example = contract.examples[0].input.get("input") if contract.examples else None
    if not isinstance(example, list):  # no example, or a {b64: ...} one: start from zeros
        example = _zeros(spec.instance_shape)
    value = html.escape(json.dumps(example))
    png = ('<label>or a PNG file<input id="png" type="file" accept="image/png"></label>'
           if spec.image is not None else "")
    key = '<label>API key<input id="key" type="password" autocomplete="off"></label>' if auth else ""
    return f"""{_page_head(contract, version)}
<form id="f"><label>input: {html.escape(_tensor_text(spec))} (JSON)<br>
<textarea id="tensor" rows="10" cols="80" spellcheck="false">{value}</textarea></label>
{png}{key}<button type="submit">Predict</button></form>
<pre id="out"></pre>
<script>{_TENSOR_SCRIPT}</script></body></html>"""


def _page_head(contract: Contract, version: str) -> str:
    """The start of the try-it page, up to the form: title, version, task, links."""
    title = html.escape(contract.name)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>{_STYLE}</style></head><body>
<h1>{title} <small>{html.escape(version)}</small></h1>
<p>{html.escape(contract.task)} model ({html.escape(contract.runtime)}).
<a href="docs">Docs</a> · <a href="openapi.json">OpenAPI</a> · <a href="metadata">Metadata</a></p>"""


def _zeros(shape: tuple[int, ...]) -> object:
    return [_zeros(shape[1:]) for _ in range(shape[0])] if shape else 0


def index_page(contract: Contract, version: str, auth: bool) -> str:
    if contract.input.tensor is not None:
        return _tensor_index(contract, contract.input.tensor, version, auth)
    example = contract.examples[0].input if contract.examples else {}
    feats = contract.input.features
    fields = "\n".join(_field(n, f.type, example.get(n), f.enum) for n, f in feats.items())
    key = '<label>API key<input id="key" type="password" autocomplete="off"></label>' if auth else ""
    schema = json.dumps({n: f.type for n, f in feats.items()}).replace("</", "<\\/")
    return f"""{_page_head(contract, version)}
<form id="f">{fields}{key}<button type="submit">Predict</button></form>
<pre id="out"></pre>
<script id="schema" type="application/json">{schema}</script>
<script>{_SCRIPT}</script></body></html>"""


def docs_page(contract: Contract, version: str, model_card: str | None) -> str:
    title = html.escape(contract.name)
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{f.type}</td><td>{html.escape(f.description or '')}</td></tr>"
        for n, f in contract.input.features.items()
    )
    if contract.input.tensor is not None:
        spec = contract.input.tensor
        rows = (f'<tr><td>input</td><td>{html.escape(spec.dtype)} {shape_text(spec.shape)}</td>'
                f'<td>{html.escape(_tensor_text(spec))}; one instance {{"input": ...}}, a batch '
                f'{{"instances": [...]}}</td></tr>')
    example = contract.examples[0].input if contract.examples else None
    curl = ""
    if example is not None:
        body = html.escape(json.dumps(example))
        curl = f"<h2>Try it</h2><pre>curl -s $URL/predict -H 'Content-Type: application/json' -d '{body}'</pre>"
    labels = ""
    if contract.output.labels:
        labels = "<p>Labels: " + ", ".join(html.escape(x) for x in contract.output.labels) + "</p>"
    card = f"<h2>Model card</h2><pre>{html.escape(model_card)}</pre>" if model_card else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title} docs</title>
<style>{_STYLE}</style></head><body>
<h1>{title} <small>{html.escape(version)}</small></h1>
<p>{html.escape(contract.task)} · runtime {html.escape(contract.runtime)} · <a href="openapi.json">OpenAPI</a></p>
{card}
<h2>Input</h2><table><tr><th>feature</th><th>type</th><th>description</th></tr>{rows}</table>{labels}
<h2>Endpoints</h2><table>
<tr><td>POST /predict</td><td>one instance, or {{"instances": [...]}}</td></tr>
<tr><td>GET /metadata</td><td>name, version, runtime, labels, input schema</td></tr>
<tr><td>GET /readyz</td><td>200 once the model is loaded and warmed up</td></tr>
<tr><td>GET /healthz</td><td>liveness</td></tr><tr><td>GET /metrics</td><td>Prometheus metrics</td></tr>
</table>{curl}</body></html>"""
