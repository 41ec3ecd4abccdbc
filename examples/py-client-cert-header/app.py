"""Tollgate plugin: count the client's certificates and expose the count as a header.

access:        reads the client's certificate chain; if there is one, sets the request header
               (default `x-client-cert-count`) to the number of certificates and stores the count
               in the request context under `cert-count`.
header_filter: sets the same header on the response from the context (`0` when nothing was stored).

Config (JSON): `{}` or `{"header": "<name>"}` to use another header name.
"""

import json
from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import client_tls, context, log, request, response, types

DEFAULT_HEADER = "x-client-cert-count"
CONTEXT_KEY = "cert-count"
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")

# Set by configure(), which the host calls at the start of every fresh instance.
_header_name = DEFAULT_HEADER


def _describe(err: Err) -> str:
    """Human-readable text for a host `error` carried by an Err."""
    e = err.value
    if isinstance(e, types.Error_WrongPhase):
        return "wrong phase: " + e.value
    if isinstance(e, types.Error_InvalidArgument):
        return "invalid argument: " + e.value
    if isinstance(e, types.Error_NotTls):
        return "connection is not TLS"
    return repr(e)


def _log(level: types.LogLevel, message: str) -> None:
    try:
        log.log(level, message)
    except Err:
        pass  # logging is best effort


class Handler(exports.Handler):
    def configure(self, config: str) -> None:
        global _header_name
        try:
            doc = json.loads(config) if config.strip() else {}
        except ValueError as e:
            raise Err(f"config is not valid JSON: {e}")
        if not isinstance(doc, dict):
            raise Err("config must be a JSON object")
        unknown = sorted(k for k in doc if k != "header")
        if unknown:
            raise Err("unknown config field(s): " + ", ".join(unknown))
        name = doc.get("header", DEFAULT_HEADER)
        if not isinstance(name, str) or not name:
            raise Err("`header` must be a non-empty string")
        name = name.lower()
        if any(c not in _TOKEN_CHARS for c in name):
            raise Err(f"`header` is not a valid header name: {name!r}")
        _header_name = name

    def phases(self) -> List[types.Phase]:
        return [types.Phase.ACCESS, types.Phase.HEADER_FILTER]

    def on_access(self) -> None:
        try:
            chain = client_tls.get_full_client_certificate_chain()
        except Err as e:
            if isinstance(e.value, types.Error_NotTls):
                return  # plaintext: no chain, nothing to add
            raise Err("get-full-client-certificate-chain failed: " + _describe(e))
        if chain is None:
            return
        n = chain.count(PEM_BEGIN)
        try:
            request.set_header(_header_name, str(n))
        except Err as e:
            raise Err("request.set-header failed: " + _describe(e))
        try:
            context.set(CONTEXT_KEY, str(n))
        except Err as e:
            _log(types.LogLevel.WARN, "context.set failed: " + _describe(e))

    def on_header_filter(self) -> None:
        try:
            value = context.get(CONTEXT_KEY)
        except Err as e:
            _log(types.LogLevel.WARN, "context.get failed: " + _describe(e))
            value = None
        try:
            response.set_header(_header_name, value if value is not None else "0")
        except Err as e:
            raise Err("response.set-header failed: " + _describe(e))

    def on_certificate(self) -> None:
        pass

    def on_rewrite(self) -> None:
        pass

    def on_balancer(self) -> None:
        pass

    def on_body_filter(self, chunk: bytes, end_of_stream: bool) -> None:
        pass

    def on_log(self) -> None:
        pass
