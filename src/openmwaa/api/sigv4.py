"""Verify AWS Signature Version 4 on incoming requests.

The canonical request is computed by botocore's own ``SigV4Auth`` so that it is
byte-for-byte what the client computed when signing; this module only feeds it the
request exactly as received and overrides the two inputs a server has to take from
the wire instead of from a local request object: the signed headers (only those
named in ``SignedHeaders``) and the payload hash.

Two steps, so that a server reads no body it cannot authenticate: ``read_header``
(form, scope, clock: no secret, no body), then, once the key is found and the body
read, ``check_signature``. Failures carry AWS's error type: IncompleteSignature (400,
a part missing), MissingAuthenticationToken, UnrecognizedClient (unknown key) and
InvalidSignature (mismatch, expired), and never repeat the header.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any
from urllib.parse import quote, unquote_plus

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

__all__ = [
    "SignatureError",
    "SignedHeader",
    "check_signature",
    "decode_query",
    "read_header",
    "unknown_key",
    "verify",
]

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


def decode_query(raw_query: str) -> list[tuple[str, str]]:
    """The query's (name, value) pairs, the one decoding both the signature check and the
    request parser use, so a signature covers exactly what is parsed.

    ``+`` is a space, as AWS's front ends read it (a client that means ``+`` sends
    ``%2B``; botocore always does); invalid UTF-8 raises UnicodeDecodeError.
    """
    pairs = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict")))
    return pairs


def _parse_authorization(value: str) -> tuple[list[str], list[str], str]:
    """Split the header into (credential parts, signed header names, signature).

    Messages name what is missing but never repeat the header (it carries a signature
    and would carry whatever a confused client put there).
    """
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
        raise _incomplete(" ".join(missing))
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


@dataclass(frozen=True)
class SignedHeader:
    """What the ``Authorization`` header claims, checked as far as it can be without
    the key's secret and the body: the server looks the key up and reads the body only
    for a request that passed this."""

    access_key: str
    stamp: str
    region: str
    service: str
    signed_names: tuple[str, ...]
    signature: str
    headers: dict[str, list[str]]
    """Every request header by lower-case name."""


def read_header(
    headers: list[tuple[str, str]],
    *,
    region: str,
    service: str,
    now: datetime | None = None,
    max_skew: timedelta = timedelta(minutes=15),
) -> SignedHeader:
    """Check the form, scope and clock of the request's SigV4 ``Authorization`` header.

    Raises :class:`SignatureError` with AWS's error type and message on any failure.
    """
    wanted: dict[str, list[str]] = {}
    for name, value in headers:
        wanted.setdefault(name.lower(), []).append(value)
    authorization = wanted.get("authorization", [])
    amz_date = wanted.get("x-amz-date", [])
    if not authorization:
        raise SignatureError("Missing Authentication Token", "MissingAuthenticationTokenException")
    if len(authorization) > 1:
        raise _incomplete("Authorization header must appear only once.")
    credential, signed_names, signature = _parse_authorization(authorization[0])
    access_key, scope_date, scope_region, scope_service, terminator = credential

    if not amz_date:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    stamp = amz_date[0].strip()
    try:
        signed_at = datetime.strptime(stamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{stamp[:32]}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        ) from None
    if terminator != _TERMINATOR:
        raise _incomplete(
            f"Credential should be scoped with a valid terminator: '{_TERMINATOR}', "
            f"not '{terminator[:32]}'."
        )
    if scope_region != region:
        raise SignatureError("Credential should be scoped to a valid region.")
    if scope_service != service:
        raise SignatureError(f"Credential should be scoped to correct service: '{service}'.")
    if scope_date != stamp[:8]:
        raise SignatureError(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
            f"date from HTTP: '{scope_date[:16]}' != '{stamp[:8]}', from '{stamp}'."
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
    return SignedHeader(
        access_key, stamp, scope_region, scope_service, tuple(signed_names), signature, wanted
    )


def unknown_key() -> SignatureError:
    """AWS's answer for a key id it does not know (or no longer knows)."""
    return SignatureError(
        "The security token included in the request is invalid.", "UnrecognizedClientException"
    )


def check_signature(
    signed: SignedHeader,
    secret: str,
    method: str,
    raw_path: str | bytes,
    raw_query: str | bytes,
    body: bytes,
) -> None:
    """Check the signature over the request exactly as received (``raw_path`` and
    ``raw_query`` still percent-encoded, no ``?``); SignatureError if it does not match."""
    payload_hash = sha256(body).hexdigest()
    claimed = signed.headers.get("x-amz-content-sha256")
    if claimed is not None and claimed[0].strip() != payload_hash:
        raise SignatureError(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )

    to_sign = HTTPHeaders()
    for name in dict.fromkeys(signed.signed_names):
        for value in signed.headers.get(name, ()):
            to_sign[name] = value
    try:
        params = decode_query(_wire_text(raw_query))
    except UnicodeDecodeError:
        raise SignatureError(_MISMATCH) from None
    path = _wire_text(raw_path)
    if not path.startswith("/") or "#" in path or "?" in path:
        # Only origin-form targets; urlsplit would cut the path at '#' or '?', and the
        # signature would then not cover all of what the router sees.
        raise SignatureError(_MISMATCH)

    request = AWSRequest(method=method, url=f"http://verifier{path}", params=params)
    request.context["timestamp"] = signed.stamp
    signer = _ServerSideSigV4(
        Credentials(signed.access_key, secret),
        signed.service,
        signed.region,
        to_sign,
        payload_hash,
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected.encode(), signed.signature.encode("utf-8", "replace")):
        raise SignatureError(_MISMATCH)


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

    The one-call form of :func:`read_header` + key lookup + :func:`check_signature`
    (the server calls them one at a time, so that it reads no body for a request
    whose header already fails). Raises :class:`SignatureError` on any failure.
    """
    signed = read_header(headers, region=region, service=service, now=now, max_skew=max_skew)
    secret = lookup_secret(signed.access_key)
    if secret is None:
        raise unknown_key()
    check_signature(signed, secret, method, raw_path, raw_query, body)
    return signed.access_key
