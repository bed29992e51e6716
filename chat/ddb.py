"""A small async DynamoDB client for the chat's hot calls (send, join, history, readiness).

botocore spends most of a call building and signing the request (a model-driven serializer,
an event system, hooks): with botocore, this service's three writes per send are 28 % of the
server's profile samples. This client speaks the DynamoDB JSON protocol directly:

- `POST /` with `Content-Type: application/x-amz-json-1.0` and
  `X-Amz-Target: DynamoDB_20120810.<Operation>`; the body is the operation's parameters as
  JSON, exactly the keyword arguments botocore's client takes (`TableName`, `Key`, `Item`
  with typed attribute values such as `{"S": "x"}` / `{"N": "1"}`, ...), and the parsed
  response is what botocore returns (without `ResponseMetadata`). No binary (`B`)
  attributes: botocore would base64 them, this client sends values as given.
- HTTP/1.1 keep-alive connections from an aiohttp pool (aiohttp is aiobotocore's own
  dependency), so a call does not open a TCP/TLS connection.
- AWS Signature Version 4 (service `dynamodb`), credentials from botocore's chain through
  aiobotocore: refreshable ones (an ECS/Fargate task role) are refreshed without blocking
  the event loop; the session token is sent and signed when there is one.
- Errors as botocore raises them, so callers keep their `except` clauses: an error answer
  is a `botocore.exceptions.ClientError` with the same `{"Error": {"Code", "Message"},
  "ResponseMetadata": {...}}` shape (`ConditionalCheckFailedException` stays recognisable);
  a refused/reset connection, a timeout or a bad answer is a `BotoCoreError` subclass
  (`EndpointConnectionError`, `ConnectTimeoutError`, `ReadTimeoutError`,
  `ConnectionClosedError`, ...).
- Retries like botocore's standard mode: throttling codes, transient codes, HTTP
  500/502/503/504, connection errors, timeouts and a DynamoDB CRC32 mismatch are retried up
  to `max_attempts` attempts in all, after a full-jitter exponential backoff (base
  `backoff_base`, at most `backoff_cap`; botocore's legacy DynamoDB policy used 50 ms).
  Timeouts are per attempt: `connect_timeout` for the TCP connect, `read_timeout` for each
  socket read (botocore's meaning).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import ssl
import time
import zlib
from http.client import responses as http_reasons
from types import TracebackType
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.httpsession import get_cert_path

TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
ALGORITHM = "AWS4-HMAC-SHA256"

# botocore.retries.standard: the codes its standard mode retries
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException"})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException",
                             "PriorRequestNotComplete"})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


class ChecksumMismatch(BotoCoreError):
    fmt = "DynamoDB crc32 checksum does not match on {operation}"


class BadResponse(BotoCoreError):
    fmt = "DynamoDB answered {operation} with HTTP {status} and a body that is not JSON"


class CredentialsUnavailable(BotoCoreError):
    fmt = "Refreshing AWS credentials failed: {error}"


class Frozen(NamedTuple):
    """The shape of botocore's ReadOnlyCredentials (what signing needs)."""

    access_key: str
    secret_key: str
    token: str | None


class CredentialSource(Protocol):
    """aiobotocore's AioCredentials / AioRefreshableCredentials, or StaticCredentials."""

    async def get_frozen_credentials(self) -> Any: ...


class StaticCredentials:
    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        self._frozen = Frozen(access_key, secret_key, token)

    async def get_frozen_credentials(self) -> Frozen:
        return self._frozen


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class SigV4Signer:
    """AWS Signature Version 4 for one service and region (the derived key is cached per
    day and secret)."""

    def __init__(self, region: str, service: str = "dynamodb") -> None:
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, yyyymmdd, key)

    def signing_key(self, secret_key: str, date: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret_key and cached[1] == date:
            return cached[2]
        key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), date), self.region),
                          self.service), "aws4_request")
        self._key = (secret_key, date, key)
        return key

    def authorization(self, *, method: str, path: str, query: str,
                      headers: dict[str, str], payload: bytes, amz_date: str,
                      access_key: str, secret_key: str) -> str:
        """The Authorization header for a request whose headers (all signed, `host` and
        `x-amz-date` among them) are `headers`. `query` is the canonical query string."""
        names = sorted(headers, key=str.lower)
        canonical_headers = "".join(
            f"{n.lower()}:{' '.join(headers[n].split())}\n" for n in names)
        signed = ";".join(n.lower() for n in names)
        canonical = "\n".join((method, quote(path or "/", safe="/~"), query,
                               canonical_headers, signed,
                               hashlib.sha256(payload).hexdigest()))
        date = amz_date[:8]
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join((ALGORITHM, amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self.signing_key(secret_key, date), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        return (f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, "
                f"Signature={signature}")


def parse_error(status: int, body: bytes, headers: Any) -> dict[str, Any]:
    """botocore's error dict for a DynamoDB error answer (JSON protocol)."""
    try:
        doc = json.loads(body) if body else {}
        if not isinstance(doc, dict):
            doc = {}
    except ValueError:
        doc = {}
    raw = doc.get("__type") or headers.get("x-amzn-ErrorType") or ""
    code = raw.split("#")[-1].split(":")[0] if raw else str(status)
    message = doc.get("message") or doc.get("Message") or (
        "" if raw else http_reasons.get(status, ""))
    response: dict[str, Any] = {k: v for k, v in doc.items()
                                if k not in ("__type", "message", "Message")}
    response["Error"] = {"Code": code, "Message": message}
    response["ResponseMetadata"] = {
        "RequestId": headers.get("x-amzn-RequestId", ""), "HTTPStatusCode": status,
        "HTTPHeaders": {k.lower(): v for k, v in headers.items()}, "RetryAttempts": 0}
    return response


def retryable_error(status: int, code: str) -> bool:
    return code in THROTTLING_CODES or code in TRANSIENT_CODES or status in TRANSIENT_STATUS


class DynamoDB:
    """The JSON-protocol client. `async with DynamoDB(...)` or start()/close(); the
    snake_case methods take botocore's keyword arguments."""

    def __init__(self, *, endpoint_url: str, region: str, credentials: CredentialSource | None,
                 connect_timeout: float = 2.0, read_timeout: float = 5.0,
                 max_attempts: int = 2, max_connections: int = 50,
                 backoff_base: float = 0.05, backoff_cap: float = 1.0) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        self.endpoint_url = endpoint_url
        self._url = f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"
        self._path = parts.path or "/"
        self._host = parts.netloc.rsplit("@", 1)[-1]
        self.region = region
        self.credentials = credentials
        self._static: Any = None  # the frozen credentials, when they are not refreshable
        self.signer = SigV4Signer(region)
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0  # attempts made, and of them retries (for tests and the bench)
        self.retries = 0

    async def start(self) -> DynamoDB:
        if self._session is None:
            ssl_context: ssl.SSLContext | bool = False
            if self._url.startswith("https:"):
                # botocore's CA bundle (AWS_CA_BUNDLE if set), read off the event loop
                cafile = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
                ssl_context = await asyncio.to_thread(ssl.create_default_context,
                                                      cafile=cafile)
            # keep-alive 12 s, as aiobotocore: shorter than the server's idle close
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=ssl_context,
                                             keepalive_timeout=12)
            # trust_env=False: no proxy or .netrc lookups (the chat talks to DynamoDB or to
            # its VPC endpoint directly)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  trust_env=False, timeout=self._timeout)
        return self

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> DynamoDB:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- the operations store.py uses ---
    async def get_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("GetItem", params)

    async def put_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("PutItem", params)

    async def update_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("UpdateItem", params)

    async def delete_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("DeleteItem", params)

    async def query(self, **params: Any) -> dict[str, Any]:
        return await self.call("Query", params)

    async def batch_write_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("BatchWriteItem", params)

    async def transact_write_items(self, **params: Any) -> dict[str, Any]:
        # a cancelled transaction is a ClientError `TransactionCanceledException` whose
        # response carries the body's `CancellationReasons` (parse_error keeps it), as botocore
        return await self.call("TransactWriteItems", params)

    async def _frozen(self) -> Any:
        if self._static is not None:
            return self._static
        if self.credentials is None:
            raise NoCredentialsError()
        try:
            frozen = await self.credentials.get_frozen_credentials()
            if not isinstance(self.credentials, RefreshableCredentials):
                self._static = frozen  # they never change: no call per request
            return frozen
        except BotoCoreError:
            raise
        except Exception as e:  # a failed mandatory refresh (botocore lets anything out)
            raise CredentialsUnavailable(error=e) from e

    def _headers(self, op: str, payload: bytes, creds: Any) -> dict[str, str]:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers = {"Content-Type": CONTENT_TYPE, "Host": self._host,
                   "X-Amz-Date": amz_date, "X-Amz-Target": TARGET_PREFIX + op}
        if creds.token:
            headers["X-Amz-Security-Token"] = creds.token
        auth = self.signer.authorization(
            method="POST", path=self._path, query="", headers=headers, payload=payload,
            amz_date=amz_date, access_key=creds.access_key, secret_key=creds.secret_key)
        headers["Authorization"] = auth
        # not signed (botocore does not sign these either)
        headers["Accept-Encoding"] = "identity"
        headers["User-Agent"] = "canary-chat-ddb/1"
        return headers

    def _transport_error(self, e: BaseException) -> BotoCoreError:
        """botocore's exception for a failure below HTTP (all of them retryable)."""
        url = self.endpoint_url
        if isinstance(e, aiohttp.ConnectionTimeoutError):
            return ConnectTimeoutError(endpoint_url=url, error=e)
        if isinstance(e, (aiohttp.ServerTimeoutError, TimeoutError)):
            return ReadTimeoutError(endpoint_url=url, error=e)  # a read took > read_timeout
        if isinstance(e, aiohttp.ClientConnectorError):
            return EndpointConnectionError(endpoint_url=url, error=e)
        if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                          aiohttp.ClientPayloadError, OSError)):
            return ConnectionClosedError(endpoint_url=url, error=e)
        return HTTPClientError(error=e)

    async def call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """One DynamoDB operation with retries; the parsed JSON answer."""
        session = self._session
        if session is None or session.closed:
            # never started, or closed while the server stops: a call that cannot be made,
            # which the store reports as unavailable (not a bare RuntimeError in a task)
            raise EndpointConnectionError(endpoint_url=self.endpoint_url,
                                          error="the DynamoDB client is closed")
        payload = json.dumps(params, separators=(",", ":")).encode()
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            creds = await self._frozen()
            headers = self._headers(op, payload, creds)  # signed again: the date moves
            failure: BaseException
            try:
                async with session.post(self._url, data=payload, headers=headers) as resp:
                    body = await resp.read()
                    status = resp.status
                    resp_headers = resp.headers
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                failure = self._transport_error(e)
                failure.__cause__ = e
            else:
                if status == 200:
                    crc = resp_headers.get("x-amz-crc32")
                    if crc is not None and str(zlib.crc32(body)) != crc.strip():
                        failure = ChecksumMismatch(operation=op)
                    else:
                        try:
                            result: dict[str, Any] = json.loads(body) if body else {}
                            return result
                        except ValueError as e:
                            raise BadResponse(operation=op, status=status) from e
                else:
                    error = parse_error(status, body, resp_headers)
                    error["ResponseMetadata"]["RetryAttempts"] = attempt - 1
                    failure = ClientError(error, op)
                    if not retryable_error(status, error["Error"]["Code"]):
                        raise failure
            if attempt >= self.max_attempts:
                raise failure
            self.retries += 1
            delay = random.random() * min(self.backoff_cap,
                                          self.backoff_base * 2 ** (attempt - 1))
            await asyncio.sleep(delay)
