"""Only requests signed with the stack's key reach moto.

moto accepts any signature, so any local account could write what the chat serves. With
EMULATOR_ACCESS_KEY_ID and EMULATOR_SECRET_ACCESS_KEY set (the local stack sets them; unset by
default, as tests start it plain), the server (keep_alive) answers only DynamoDB JSON requests
signed with that key: the SigV4 signature is recomputed with botocore's signer over the
signed headers and the body, and compared in constant time (`check_signature`). Anything
else, moto's own API (/moto-api/reset) included, gets DynamoDB's error for it (400
UnrecognizedClientException / InvalidSignatureException, 403 AccessDeniedException).

Test: tests/integration/test_dynamodb_emulator_auth.py.
"""

from __future__ import annotations

import datetime
import hmac
import os
import re
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

# The access key the emulator requires: None when the variables are unset.
REQUIRED_KEY: tuple[str, str] | None = (
    (os.environ["EMULATOR_ACCESS_KEY_ID"], os.environ["EMULATOR_SECRET_ACCESS_KEY"])
    if os.environ.get("EMULATOR_ACCESS_KEY_ID") and os.environ.get("EMULATOR_SECRET_ACCESS_KEY")
    else None)
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\Z")
# As AWS: a request dated more than 15 minutes away from the server's clock is refused.
MAX_SKEW = datetime.timedelta(minutes=15)


class _SignedHeadersOnly(SigV4Auth):
    """botocore's SigV4 signer over exactly the headers the client says it signed."""

    def __init__(self, credentials: Credentials, service: str, region: str,
                 signed: list[str]) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        out = HTTPHeaders()
        for name in self._signed:
            out[name] = request.headers[name]
        return out


def check_signature(method: str, path: str, headers: Any, body: bytes,
                    key: tuple[str, str],
                    now: datetime.datetime | None = None) -> tuple[str, str] | None:
    """None when the request is signed (SigV4) with `key` (access key id, secret);
    otherwise DynamoDB's (error type, message) for it."""
    m = _AUTHORIZATION.match(headers.get("Authorization") or "")
    if m is None:
        return ("MissingAuthenticationTokenException",
                "Request is missing Authentication Token")
    if not hmac.compare_digest(m["key"].encode(), key[0].encode()):
        return ("UnrecognizedClientException",
                "The security token included in the request is invalid.")
    amz_date = headers.get("X-Amz-Date") or ""
    try:
        stamp = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.UTC)
    except ValueError:
        return ("IncompleteSignatureException", "X-Amz-Date is missing or malformed")
    now = now or datetime.datetime.now(datetime.UTC)
    if abs(now - stamp) > MAX_SKEW or amz_date[:8] != m["date"]:
        return ("InvalidSignatureException", "Signature expired or dated for another day")
    signed = m["signed"].split(";")
    if "host" not in signed or any(headers.get(n) is None for n in signed):
        return ("IncompleteSignatureException", "a signed header is missing")
    request = AWSRequest(method=method, url=f"http://{headers.get('Host')}{path}",
                         data=body, headers={n: headers.get(n) for n in signed})
    request.context["timestamp"] = amz_date
    signer = _SignedHeadersOnly(Credentials(key[0], key[1]), m["service"], m["region"], signed)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)),
                                request)
    if not hmac.compare_digest(expected.encode(), m["signature"].encode()):
        return ("InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.")
    return None
