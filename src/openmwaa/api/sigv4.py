"""Verify AWS Signature Version 4 on incoming requests.

The canonical request is computed by botocore's own ``SigV4Auth`` so that it is
byte-for-byte what the client computed when signing; this module only feeds it the
request exactly as received and overrides the two inputs a server has to take from
the wire instead of from a local request object: the signed headers (only those
named in ``SignedHeaders``) and the payload hash.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any
from urllib.parse import quote, unquote

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

__all__ = ["SignatureError", "verify"]

_ALGORITHM = "AWS4-HMAC-SHA256"
_TERMINATOR = "aws4_request"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
# Bytes left as they are when a raw path/query holds non-ASCII octets: everything
# printable, so that only the octets the client could not have sent literally change.
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


class SignatureError(Exception):
    """The request is not authenticated; ``str(e)`` is AWS's message.

    ``code`` is the AWS error type (for ``x-amzn-ErrorType``) and ``status`` the HTTP
    status AWS answers with.
    """

    def __init__(
        self, message: str, code: str = "InvalidSignatureException", status: int = 403
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def _incomplete(message: str) -> SignatureError:
    return SignatureError(message, "IncompleteSignatureException", 400)


class _ServerSideSigV4(SigV4Auth):
    """botocore's signer, told which headers and payload hash the client signed."""

    def __init__(
        self,
        credentials: Credentials,
        service: str,
        region: str,
        signed: HTTPHeaders,
        payload_hash: str,
    ) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed
        self._payload_hash = payload_hash

    def headers_to_sign(self, request: Any) -> HTTPHeaders:
        # The client decided what to sign; botocore's blacklist and Host guessing
        # apply to the client side only.
        return self._signed

    def payload(self, request: Any) -> str:
        return self._payload_hash


def _wire_text(raw: str | bytes) -> str:
    """The request target as ASCII text; stray non-ASCII octets are percent-encoded
    (that is what a client signing them would have done)."""
    if isinstance(raw, bytes):
        return raw.decode("ascii") if raw.isascii() else quote(raw, safe=_PRINTABLE)
    return raw if raw.isascii() else quote(raw, safe=_PRINTABLE)


def _query_params(raw_query: str) -> list[tuple[str, str]]:
    """Decode the query into pairs; botocore re-encodes them canonically (RFC 3986,
    uppercase hex, sorted), whatever percent-encoding style the client used."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key, errors="strict"), unquote(value, errors="strict")))
    return pairs


def _parse_authorization(value: str) -> tuple[list[str], list[str], str]:
    """Split the header into (credential parts, signed header names, signature)."""
    algorithm, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    if algorithm == _ALGORITHM:
        for item in rest.split(","):
            name, sep, val = item.strip().partition("=")
            if sep:
                params[name] = val.strip()
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if missing:
        raise _incomplete(" ".join([*missing, f"Authorization={value}"]))
    credential = params["Credential"].split("/")
    if len(credential) != 5 or not all(credential):
        raise _incomplete(
            "Credential should have the form "
            "'<access key id>/<yyyymmdd>/<region>/<service>/aws4_request'."
        )
    signed = params["SignedHeaders"].lower().split(";")
    return credential, signed, params["Signature"]


def _minutes(skew: timedelta) -> str:
    seconds = int(skew.total_seconds())
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


def _check_clock(stamp: str, signed_at: datetime, now: datetime, max_skew: timedelta) -> None:
    now_stamp = now.strftime(SIGV4_TIMESTAMP)
    if signed_at < now - max_skew:
        edge = (now - max_skew).strftime(SIGV4_TIMESTAMP)
        raise SignatureError(
            f"Signature expired: {stamp} is now earlier than {edge} "
            f"({now_stamp} - {_minutes(max_skew)})"
        )
    if signed_at > now + max_skew:
        edge = (now + max_skew).strftime(SIGV4_TIMESTAMP)
        raise SignatureError(
            f"Signature not yet current: {stamp} is still later than {edge} "
            f"({now_stamp} + {_minutes(max_skew)})"
        )


def verify(
    method: str,
    raw_path: str | bytes,
    raw_query: str | bytes,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    region: str,
    service: str,
    lookup_secret: Callable[[str], str | None],
    now: datetime | None = None,
    max_skew: timedelta = timedelta(minutes=15),
) -> str:
    """Check the request's SigV4 ``Authorization`` header; return the access key id.

    ``raw_path``/``raw_query`` must be exactly as received (still percent-encoded,
    no ``?``); with ASGI pass ``scope["raw_path"]`` and ``scope["query_string"]``.
    Raises :class:`SignatureError` with AWS's message on any failure.
    """
    wanted: dict[str, list[str]] = {}
    authorization: list[str] = []
    amz_date: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "authorization":
            authorization.append(value)
        elif lname == "x-amz-date":
            amz_date.append(value)
        wanted.setdefault(lname, []).append(value)
    if not authorization:
        raise SignatureError("Missing Authentication Token", "MissingAuthenticationTokenException")
    if len(authorization) > 1:
        raise _incomplete("Authorization header must appear only once.")
    credential, signed_names, signature = _parse_authorization(authorization[0])
    access_key, scope_date, scope_region, scope_service, terminator = credential

    if not amz_date:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a "
            f"'Date' header. Authorization={authorization[0]}"
        )
    stamp = amz_date[0].strip()
    try:
        signed_at = datetime.strptime(stamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{stamp}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        ) from None
    if terminator != _TERMINATOR:
        raise _incomplete(
            f"Credential should be scoped with a valid terminator: '{_TERMINATOR}', "
            f"not '{terminator}'."
        )
    if scope_region != region:
        raise SignatureError("Credential should be scoped to a valid region.")
    if scope_service != service:
        raise SignatureError(f"Credential should be scoped to correct service: '{service}'.")
    if scope_date != stamp[:8]:
        raise SignatureError(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
            f"date from HTTP: '{scope_date}' != '{stamp[:8]}', from '{stamp}'."
        )
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    _check_clock(stamp, signed_at, now, max_skew)
    if "host" not in signed_names:
        raise _incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )

    secret = lookup_secret(access_key)
    if secret is None:
        raise SignatureError(
            "The security token included in the request is invalid.",
            "UnrecognizedClientException",
        )

    payload_hash = sha256(body).hexdigest()
    claimed = wanted.get("x-amz-content-sha256")
    if claimed is not None and claimed[0].strip() != payload_hash:
        raise SignatureError(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )

    signed = HTTPHeaders()
    for name in dict.fromkeys(signed_names):
        for value in wanted.get(name, ()):
            signed[name] = value
    try:
        params = _query_params(_wire_text(raw_query))
    except UnicodeDecodeError:
        raise SignatureError(_MISMATCH) from None
    path = _wire_text(raw_path)
    if not path.startswith("/") or "#" in path or "?" in path:
        # Only origin-form targets; urlsplit would cut the path at '#' or '?', and the
        # signature would then not cover all of what the router sees.
        raise SignatureError(_MISMATCH)

    request = AWSRequest(method=method, url=f"http://verifier{path}", params=params)
    request.context["timestamp"] = stamp
    signer = _ServerSideSigV4(
        Credentials(access_key, secret), scope_service, scope_region, signed, payload_hash
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise SignatureError(_MISMATCH)
    return access_key
