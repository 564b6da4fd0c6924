"""The Application Load Balancers' front end for the ecs tests, on loopback: what the ALB does with a request,
acting on moto's ELBv2 model.

* ``pick(elb, lb_arn, port, host, path)``: the listener on ``port``, its rules in priority order (host-header and
  path-pattern conditions with ALB's wildcards ``*`` and ``?``; the host case-insensitive, without its port), else
  its default action; a ``forward`` names the target group; the rule's ``url-rewrite`` transform rewrites the path.
* ``AlbFront``: one HTTP server that answers both as a load balancer's own address (``url(dns)``, origin-form
  requests) and as an HTTP proxy (``proxy_url``: absolute-form requests ``POST http://<DNSName>/predict``, which
  is how a client with ``HTTP_PROXY`` set sends them): a client, e.g. mlship's smoke test, reaches
  ``http://<DNSName>`` as it would reach the real load balancer.
* ``store_transforms(elb, action, params)``: moto keeps no rule transforms; this keeps them on moto's rule (from
  CreateRule/ModifyRule's query parameters) so that DescribeRules returns them and ``pick`` applies them.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from emulators._runtime import HOP_BY_HOP

TARGET_HEADER = "X-Ecs-Emulator-Task"  # on each answer: the id of the task that gave it
#: target group ARN -> (host port of one of its healthy targets, its label), or None
Targets = Callable[[str], tuple[int, str] | None]
_REWRITE = re.compile(r"^Transforms\.member\.(\d+)\.UrlRewriteConfig\.Rewrites\.member\.(\d+)\.(Regex|Replace)$")


def _wild(pattern: str, text: str, *, ignore_case: bool) -> bool:
    regex = "^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$"
    return re.match(regex, text, re.IGNORECASE if ignore_case else 0) is not None


def _matches(rule: Any, host: str, path: str) -> bool:
    for condition in rule.conditions:
        field = condition.get("Field")
        config = condition.get("HostHeaderConfig") or condition.get("PathPatternConfig") or {}
        values = config.get("Values") or condition.get("Values") or []
        if field == "host-header" and not any(_wild(v, host, ignore_case=True) for v in values):
            return False
        if field == "path-pattern" and not any(_wild(v, path, ignore_case=False) for v in values):
            return False
    return True


def rewrite(rule: Any, path: str) -> str:
    """The path after the rule's url-rewrite transform (the first rewrite whose regex matches; ``$1`` groups)."""
    for transform in getattr(rule, "transforms", None) or []:
        for item in (transform.get("UrlRewriteConfig") or {}).get("Rewrites", []):
            if re.search(item["Regex"], path):
                return re.sub(item["Regex"], re.sub(r"\$(\d)", r"\\\1", item["Replace"]), path, count=1)
    return path


def pick(elb: Any, lb_arn: str, port: int, host: str, path: str) -> tuple[str, str] | None:
    """(target group ARN, rewritten path) for a request, or None (no listener, no rule, or not a forward)."""
    lb = elb.load_balancers.get(lb_arn)
    listener = next((li for li in (lb.listeners.values() if lb else []) if int(li.port) == port), None)
    if listener is None:
        return None
    bare_path = path.partition("?")[0]
    ordered = sorted((r for r in listener.rules.values() if not r.is_default), key=lambda r: int(r.priority))
    for rule in [*ordered, *(r for r in listener.rules.values() if r.is_default)]:
        if rule.is_default or _matches(rule, host.partition(":")[0], bare_path):
            forward = next((a for a in rule.actions if a.type == "forward"), None)
            if forward is None:
                return None
            query = path[len(bare_path):]
            return str(forward.data.get("TargetGroupArn")), rewrite(rule, bare_path) + query
    return None


def store_transforms(elb: Any, action: str, params: dict[str, Any]) -> None:
    """Keep CreateRule's/ModifyRule's url-rewrite transforms on moto's rule."""
    if action not in ("CreateRule", "ModifyRule"):
        return
    rewrites: dict[tuple[int, int], dict[str, str]] = {}
    for key, value in params.items():
        found = _REWRITE.match(key)
        if found:
            rewrites.setdefault((int(found[1]), int(found[2])), {})[found[3]] = value
    if action == "CreateRule":
        listener = next((li for lb in elb.load_balancers.values() for li in lb.listeners.values()
                         if li.arn == params.get("ListenerArn")), None)
        rule = next((r for r in (listener.rules.values() if listener else []) if str(r.priority) ==
                     str(params.get("Priority"))), None)
    else:
        rule = next((r for lb in elb.load_balancers.values() for li in lb.listeners.values()
                     for r in li.rules.values() if r.arn == params.get("RuleArn")), None)
        if rule is not None and not rewrites and params.get("ResetTransforms") != "true":
            return  # no transform named: unchanged
    if rule is not None:
        rule.transforms = [{"Type": "url-rewrite", "UrlRewriteConfig": {"Rewrites": [
            rewrites[k] for k in sorted(rewrites)]}}] if rewrites else []


class AlbFront:
    """Loopback addresses for the load balancers (see the module docstring). ``targets(tg_arn)`` picks a healthy
    target of a target group."""

    def __init__(self, elb: Callable[[], Any], targets: Targets) -> None:
        self._elb, self._targets = elb, targets
        self._servers: dict[str, ThreadingHTTPServer] = {}  # lb ARN ("" = the proxy) -> its server
        self._lock = threading.Lock()
        self.proxy_url = self._serve("")

    def url(self, dns: str) -> str:
        """The loopback address that stands for the load balancer named ``dns`` (its port 80 listener)."""
        lb = next(lb for lb in self._elb().load_balancers.values() if lb.dns_name == dns)
        with self._lock:
            if lb.arn in self._servers:
                return f"http://127.0.0.1:{self._servers[lb.arn].server_address[1]}"
        return self._serve(lb.arn)

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.shutdown()
            server.server_close()

    def _where(self, lb_arn: str, target: str, host: str) -> tuple[str, int, str] | None:
        """(load balancer ARN, listener port, path) of a request."""
        if lb_arn:
            return lb_arn, 80, target
        parts = urlsplit(target)
        lb = next((lb for lb in self._elb().load_balancers.values() if lb.dns_name == parts.hostname), None)
        if lb is None:
            return None
        return lb.arn, parts.port or 80, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def _serve(self, lb_arn: str) -> str:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                host = self.headers.get("Host", "")
                where = front._where(lb_arn, self.path, host)
                chosen = pick(front._elb(), *where[:2], host, where[2]) if where else None
                target = front._targets(chosen[0]) if chosen else None
                if where is None or chosen is None or target is None:
                    return self._answer(503 if chosen else 404, b"no target for this request\n", {})
                conn = http.client.HTTPConnection("127.0.0.1", target[0], timeout=30)
                try:
                    conn.putrequest(self.command, chosen[1], skip_host=True, skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        if key.lower() not in HOP_BY_HOP and not key.lower().startswith("proxy-"):
                            conn.putheader(key, value)
                    conn.putheader("X-Forwarded-For", self.client_address[0])
                    conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
                    self._answer(resp.status, data, {**headers, TARGET_HEADER: target[1]})
                except (OSError, http.client.HTTPException):
                    self._answer(502, b"502 Bad Gateway\n", {})
                finally:
                    conn.close()

            def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                         name=f"alb-{lb_arn[-8:] or 'proxy'}").start()
        with self._lock:
            self._servers[lb_arn] = server
        return f"http://127.0.0.1:{server.server_address[1]}"
