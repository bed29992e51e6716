"""The local target's DynamoDB API: moto server, with two gaps filled.

1. moto 5.2 leaves `TableId` out of DescribeTable, and community.aws.dynamodb_table reads it
   (KeyError 'table_id'), so the role could not create the tables with the same task the AWS
   target uses. `patch()` adds a stable TableId (a UUID derived from the table's ARN).

2. moto's `Table.query` walks every item of the table (all partitions), sorts the candidates
   and compares each with the range condition: one Query costs O(items in the table), and the
   30-minute soak (~36,000 messages in one room) collapsed on it. Real DynamoDB answers a Query
   in O(log n + page). `patch()` keeps, per partition, a sorted list of the range-key values
   (maintained by put_item/delete_item, rebuilt if it ever disagrees with the partition) and
   hands moto's ORIGINAL query only the items it would look at: the queried partition, cut with
   `bisect` to the range condition's interval, from ExclusiveStartKey on, up to the item where
   moto's loop stops (Limit reached, or the 1 MB result size). moto's own code still sorts,
   compares, counts, applies Limit, the size limit, LastEvaluatedKey, the FilterExpression
   (which moto applies after the page is cut, as DynamoDB does), projections and deepcopy.
   Anything outside the plain case (an index, legacy QueryFilter kwargs, no range key, an
   ExclusiveStartKey of another partition, B range keys, an unexpected operator or error)
   goes to the original query unchanged.

3. moto's server runs each request in its own thread, and its writes are read-modify-write
   without a lock: two concurrent `UpdateItem ADD 1` on one counter could both answer the
   same value, and two conditional puts of one key (`attribute_not_exists`) could both
   succeed. DynamoDB applies each write to an item atomically, and the chat's exactly-once
   rests on that. `patch()` runs every write request (PutItem, UpdateItem, DeleteItem,
   BatchWriteItem, TransactWriteItems) under one lock, from parsing to the serialised answer.

4. moto's server (werkzeug's) closes the connection after every response, so every
   DynamoDB call paid a new TCP connection and a new server thread: an emulator cost real
   DynamoDB (keep-alive HTTPS) does not have, and the largest part of a send's latency on
   the emulator. `main` keeps DynamoDB's connections open (HTTP/1.1 keep-alive): only for
   requests of the DynamoDB JSON protocol with a Content-Length body, which moto always
   reads whole; every other request (other services, the moto API) is answered as before
   and its connection closed.

5. On such a kept-alive DynamoDB request the handler calls moto's DynamoHandler itself
   (`dynamodb_call`), without werkzeug's WSGI round, Flask and moto's per-request backend
   lookup under a process-wide lock, and writes no access-log line: the emulator's CPU per
   call fell by about half and more (docs/benchmarks.md); what moto computes is unchanged.

7. moto accepts any signature, so any local account could write what the chat serves. With
   EMULATOR_ACCESS_KEY_ID and EMULATOR_SECRET_ACCESS_KEY set (the local stack sets them; off
   by default, as tests start it plain), `main` answers only DynamoDB JSON requests signed
   with that key: the SigV4 signature is recomputed with botocore's signer over the signed
   headers and the body, and compared in constant time (`check_signature`). Anything else,
   moto's own API (/moto-api/reset) included, gets DynamoDB's error for it (400
   UnrecognizedClientException / InvalidSignatureException, 403 AccessDeniedException).

6. Python's full GC collections walked every stored item while all request threads waited:
   pauses of hundreds of milliseconds once tens of thousands of items were stored (the
   chat's store latency p99 grew over a benchmark sitting). `bound_gc_pauses` freezes what
   survives each full collection.

7. moto 5.2's CloudWatch GetMetricData answers 500 to a percentile statistic (`p95`):
   its `Statistics` knows Sum/Average/Minimum/Maximum/SampleCount only, returns None for
   anything else, and the response cannot serialise None. The deploy gate reads p95 of the
   chat's `CanaryChat` `AckLatency` (put as Values/Counts, which moto stores as one datum
   per sample). `patch_cloudwatch_percentiles()` computes `pNN` (e.g. p95, p99.9) from the
   stored samples of the period, nearest-rank (the smallest sample with at least NN% of the
   samples at or below it); a statistic set counts only when CloudWatch itself could take a
   percentile of it (SampleCount 1 or Minimum == Maximum, API_GetMetricStatistics). A period
   whose statistic cannot be computed returns no datapoint (CloudWatch's behaviour for a
   period without data) instead of None. CloudWatch's own percentiles are approximations
   over its internal distribution; the emulator's are exact over the samples.

`main` runs moto's own server entry point with the same arguments as `moto_server`.
"""

from __future__ import annotations

import datetime
import email.parser
import gc
import hmac
import http.client
import math
import os
import re
import sys
import threading
import uuid
from bisect import bisect_left, bisect_right
from io import BytesIO
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from moto.cloudwatch.models import (
    CloudWatchBackend,
    MetricAggregatedDatum,
    MetricDatum,
    Statistics,
)
from moto.core.request import Request
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, Table
from moto.dynamodb.responses import DynamoHandler

# moto refuses to build an Item larger than this (LimitedSizeDict, dynamo_type.py): no single
# item can push a page over RESULT_SIZE_LIMIT unless the page already holds more than
# RESULT_SIZE_LIMIT - MAX_ITEM_SIZE bytes.
MAX_ITEM_SIZE = 405000

_INDEX_ATTR = "_emulator_range_index"
_LOCK = threading.RLock()  # guards every range index and the put/delete that maintain them
_SUPPORTED = {"EQ", "=", "LT", "<", "LE", "<=", "GT", ">", "GE", ">=", "BETWEEN", "BEGINS_WITH"}

_describe = Table.describe
_put_item = Table.put_item
_delete_item = Table.delete_item
_query = Table.query
_patched = False


def _describe_with_id(self: Table, base_key: str = "TableDescription") -> dict[str, Any]:
    result = _describe(self, base_key)
    result[base_key].setdefault("TableId", str(uuid.uuid5(uuid.NAMESPACE_URL, self.table_arn)))
    return result


class _RangeIndex:
    """One partition's range keys in sort order: `natives` (cast values, for bisect) and the
    DynamoType keys of the partition dict at the same positions."""

    __slots__ = ("keys", "natives", "partition")

    def __init__(self, partition: dict[DynamoType, Item]) -> None:
        self.partition = partition
        self.keys: list[DynamoType] = sorted(partition, key=lambda k: k.cast_value)
        self.natives: list[Any] = [k.cast_value for k in self.keys]

    def add(self, key: DynamoType) -> None:
        value = key.cast_value
        i = bisect_left(self.natives, value)
        if i < len(self.natives) and self.natives[i] == value:
            self.keys[i] = key  # overwrite under the same key: the item is read from the dict
        else:
            self.natives.insert(i, value)
            self.keys.insert(i, key)

    def remove(self, key: DynamoType) -> None:
        value = key.cast_value
        i = bisect_left(self.natives, value)
        if i < len(self.natives) and self.natives[i] == value:
            del self.natives[i]
            del self.keys[i]


def _indexes(table: Table) -> dict[DynamoType, _RangeIndex]:
    indexes: dict[DynamoType, _RangeIndex] | None = table.__dict__.get(_INDEX_ATTR)
    if indexes is None:
        indexes = {}
        table.__dict__[_INDEX_ATTR] = indexes
    return indexes


def _valid_index(table: Table, hash_key: DynamoType) -> _RangeIndex | None:
    """The partition's range index, rebuilt if missing or out of step (call under _LOCK)."""
    partition = table.items.get(hash_key)  # .get: items is a defaultdict
    indexes = _indexes(table)
    if partition is None:
        indexes.pop(hash_key, None)
        return None
    index = indexes.get(hash_key)
    if index is None or index.partition is not partition or len(index.keys) != len(partition):
        index = indexes[hash_key] = _RangeIndex(partition)
    return index


def _maintain(table: Table, hash_key: DynamoType, range_key: DynamoType, added: bool) -> None:
    index = table.__dict__.get(_INDEX_ATTR, {}).get(hash_key)
    if index is None:
        return
    partition = table.items.get(hash_key)
    if added:
        index.add(range_key)
    else:
        index.remove(range_key)
    if partition is None or index.partition is not partition or len(index.keys) != len(partition):
        del table.__dict__[_INDEX_ATTR][hash_key]  # out of step: rebuilt by the next query


def _put_item_indexed(self: Table, *args: Any, **kwargs: Any) -> Item:
    with _LOCK:
        item = _put_item(self, *args, **kwargs)
        if self.range_key_attr is not None and item.range_key is not None:
            _maintain(self, item.hash_key, item.range_key, added=True)
        return item


def _delete_item_indexed(self: Table, hash_key: DynamoType,
                         range_key: DynamoType | None) -> Item | None:
    with _LOCK:
        item = _delete_item(self, hash_key, range_key)
        if item is not None and self.range_key_attr is not None and range_key is not None:
            _maintain(self, hash_key, range_key, added=False)
        return item


def _interval(natives: list[Any], comparison: str | None,
              values: list[Any]) -> tuple[int, int] | None:
    """[lo, end): the positions whose range key can satisfy the condition."""
    n = len(natives)
    if not comparison:
        return 0, n
    if comparison not in _SUPPORTED:
        return None
    a = values[0]
    if comparison in ("EQ", "="):
        return bisect_left(natives, a), bisect_right(natives, a)
    if comparison in ("LT", "<"):
        return 0, bisect_left(natives, a)
    if comparison in ("LE", "<="):
        return 0, bisect_right(natives, a)
    if comparison in ("GT", ">"):
        return bisect_right(natives, a), n
    if comparison in ("GE", ">="):
        return bisect_left(natives, a), n
    if comparison == "BETWEEN":
        lo, end = bisect_left(natives, a), bisect_right(natives, values[1])
        return lo, max(lo, end)
    # BEGINS_WITH, strings only: every string with prefix a lies in [a, a with its last
    # character incremented)
    if not isinstance(a, str) or not a:
        return None
    lo = bisect_left(natives, a)
    if ord(a[-1]) >= sys.maxunicode:
        return lo, n
    return lo, max(lo, bisect_left(natives, a[:-1] + chr(ord(a[-1]) + 1)))


def _candidates(table: Table, hash_key: DynamoType, comparison: str | None,
                range_objs: list[DynamoType], limit: int | None,
                exclusive_start_key: dict[str, Any] | None,
                forward: bool) -> list[Item] | None:
    """The items moto's query loop would look at, in key order; None: use the original."""
    with _LOCK:
        index = _valid_index(table, hash_key)
        if index is None:
            return []
        natives, keys, partition = index.natives, index.keys, index.partition
        bounds = _interval(natives, comparison, [o.cast_value for o in range_objs])
        if bounds is None:
            return None
        lo, end = bounds
        n = len(natives)
        start = lo if forward else end - 1
        if exclusive_start_key is not None:
            # moto skips the items that come before or at the start key in scan order
            if DynamoType(exclusive_start_key[table.hash_key_attr]) != hash_key:
                return None
            esk = DynamoType(exclusive_start_key[table.range_key_attr]).cast_value  # type: ignore[index]
            if forward:
                start = max(start, bisect_right(natives, esk))
            else:
                start = min(start, bisect_left(natives, esk) - 1)
        # Replay moto's loop (counting and sizing only) to find where it stops.
        step = 1 if forward else -1
        chosen: list[Item] = []
        count = size = 0
        i = start
        while 0 <= i < n:
            item = partition[keys[i]]
            item_size = item.size()
            if count == limit or size + item_size > RESULT_SIZE_LIMIT:
                chosen.append(item)  # moto breaks here and reports LastEvaluatedKey
                break
            chosen.append(item)
            inside = lo <= i < end
            if not comparison or item.range_key.compare(comparison, range_objs):  # type: ignore[union-attr]
                if not inside:
                    return None  # the interval was wrong: never guess, use the original
                count += 1
                size += item_size
            elif not inside and size + MAX_ITEM_SIZE <= RESULT_SIZE_LIMIT:
                break  # past the interval: nothing further can match or stop the loop
            i += step
    if not forward:
        chosen.reverse()
    return chosen


class _Candidates:
    """A stand-in for the table whose all_items() is the pre-selected candidates; every other
    attribute is the table's own."""

    def __init__(self, table: Table, items: list[Item]) -> None:
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_items", items)

    def all_items(self) -> list[Item]:
        return list(self._items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def _query_indexed(self: Table, hash_key: DynamoType | None, range_comparison: str | None,
                   range_objs: list[DynamoType], limit: int, exclusive_start_key: dict[str, Any],
                   scan_index_forward: bool, projection_expressions: list[list[str]] | None,
                   index_name: str | None = None, consistent_read: bool = False,
                   filter_expression: Any = None,
                   hash_key_conditions: list[tuple[str, DynamoType]] | None = None,
                   range_key_conditions: list[tuple[str, str, list[DynamoType]]] | None = None,
                   **filter_kwargs: Any) -> tuple[list[Item], int, dict[str, Any] | None]:
    args = (hash_key, range_comparison, range_objs, limit, exclusive_start_key,
            scan_index_forward, projection_expressions, index_name, consistent_read,
            filter_expression)
    kwargs = dict(hash_key_conditions=hash_key_conditions,
                  range_key_conditions=range_key_conditions, **filter_kwargs)
    plain = (hash_key is not None and not index_name and not filter_kwargs
             and self.range_key_attr is not None and self.range_key_type in ("S", "N")
             and (limit is None or limit >= 1)
             and (not range_key_conditions
                  or (len(range_key_conditions) == 1
                      and range_key_conditions[0][0] == self.range_key_attr)))
    candidates = None
    if plain:
        try:
            candidates = _candidates(self, hash_key, range_comparison,  # type: ignore[arg-type]
                                     range_objs, limit, exclusive_start_key,
                                     scan_index_forward is not False)
        except Exception:  # any surprise: the original query decides
            candidates = None
    if candidates is None:
        return _query(self, *args, **kwargs)
    return _query(_Candidates(self, candidates), *args, **kwargs)  # type: ignore[arg-type]


_WRITES = ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")


def _atomic(handler: Any) -> Any:
    def locked(self: Any) -> Any:
        with _LOCK:
            return handler(self)

    locked.__name__ = handler.__name__
    return locked


def patch() -> None:
    """Install the patches into moto's Table and DynamoHandler (idempotent)."""
    global _patched
    if _patched:
        return
    for name in _WRITES:
        setattr(DynamoHandler, name, _atomic(getattr(DynamoHandler, name)))
    Table.describe = _describe_with_id  # type: ignore[method-assign]
    Table.put_item = _put_item_indexed  # type: ignore[method-assign]
    Table.delete_item = _delete_item_indexed  # type: ignore[method-assign]
    Table.query = _query_indexed  # type: ignore[method-assign]
    _patched = True


# --------------------------------------------------------------------------- CloudWatch

_PERCENTILE_RE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")
_cw_patched = False


def percentile_of(stat: str) -> float | None:
    """NN of a `pNN` statistic (0 < NN <= 100), None for any other statistic."""
    m = _PERCENTILE_RE.match(stat)
    if not m:
        return None
    q = float(m.group(1))
    return q if 0 < q <= 100 else None


def nearest_rank(samples: list[float], q: float) -> float | None:
    """The q-th percentile (0 < q <= 100) of `samples`, nearest-rank: the smallest sample
    with at least q% of the samples at or below it. None when there are no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _percentile_samples(stats: Any) -> list[float]:
    samples: list[float] = []
    for datum in stats.metric_data or []:
        if isinstance(datum, MetricDatum):
            samples.append(float(datum.value))
        elif isinstance(datum, MetricAggregatedDatum) and (
                datum.sample_count == 1 or datum.min == datum.max):
            samples.extend([float(datum.min)] * int(datum.sample_count))
    return samples


def patch_cloudwatch_percentiles() -> None:
    """Teach moto's CloudWatch `pNN` statistics in GetMetricData (see 7. above); idempotent."""
    global _cw_patched
    if _cw_patched:
        return
    get_statistic = Statistics.get_statistics_for_type
    get_metric_data = CloudWatchBackend.get_metric_data

    def get_statistics_for_type(self: Any, stat: str) -> Any:
        q = percentile_of(stat)
        if q is None:
            return get_statistic(self, stat)
        return nearest_rank(_percentile_samples(self), q)

    def get_metric_data_without_none(self: Any, *args: Any, **kwargs: Any) -> Any:
        results = get_metric_data(self, *args, **kwargs)
        for result in results:
            pairs = [(t, v) for t, v in zip(result["timestamps"], result["values"],
                                                   strict=True)
                     if v is not None]
            result["timestamps"] = [t for t, _ in pairs]
            result["values"] = [v for _, v in pairs]
        return results

    Statistics.get_statistics_for_type = get_statistics_for_type  # type: ignore[method-assign]
    CloudWatchBackend.get_metric_data = get_metric_data_without_none  # type: ignore[method-assign]
    _cw_patched = True


def original_query() -> Any:
    """moto's unpatched Table.query (for tests comparing the two)."""
    return _query


class _NoDrainSelectors:
    """werkzeug's `selectors` as seen by its request handler: after each response it reads
    whatever else is on the socket (10 ms wait, then a blocking read of up to 10 MB) to
    discard an unread body before closing. On a kept-alive connection that is the next
    request: a connection this handler keeps open is not drained."""

    keeping = threading.local()
    EVENT_READ = 1  # selectors.EVENT_READ


    def DefaultSelector(self) -> Any:  # the name werkzeug calls
        import selectors

        sel = selectors.DefaultSelector()
        if getattr(self.keeping, "on", False):
            sel.select = lambda timeout=None: []  # type: ignore[method-assign]
        return sel


# EMULATOR_FAST_PATH=0: every request through werkzeug and Flask, as moto_server answers it
# (tests compare the two paths' answers)
FAST_PATH = os.environ.get("EMULATOR_FAST_PATH", "1") != "0"


# The access key the emulator requires (see 7. above): None when the variables are unset.
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


def dynamodb_call(method: str, path: str, headers: Any, body: bytes,
                  server: tuple[Any, ...]) -> tuple[int, dict[str, Any], Any]:
    """moto's answer to one DynamoDB JSON-protocol request: (status, headers, body).

    What moto's server does between the socket and `DynamoHandler.dispatch`, minus the
    parts that serve other services: werkzeug's WSGI round, Flask's request context and
    dispatch, and moto's DomainDispatcherApplication, which looks up the backend under a
    process-wide lock on every request. Those were about two thirds of the emulator's CPU
    per call (py-spy): the same request object (moto's `Request`, as its Flask app builds
    it), the same handler, the same answer."""
    target, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": target or "/",
        "QUERY_STRING": query, "RAW_URI": path, "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]), "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        elif "_" not in name:  # as werkzeug: a header spelled with "_" is dropped
            environ["HTTP_" + key] = value
    request = Request(environ)
    request.from_wsgi_server = True  # type: ignore[misc]  # the server adds Date
    try:
        result = DynamoHandler.dispatch(request, request.raw_url, dict(request.headers))
    except ClientError as exc:  # as moto's convert_to_flask_response
        result = 400, {}, exc.response["Error"]["Message"]
    if len(result) == 3:
        status, out, content = result
    else:
        status, out, content = 200, {}, result
    return int(status), dict(out), content


def keep_alive_handler() -> Any:
    """moto's request handler, keeping DynamoDB JSON-protocol connections open."""
    import werkzeug.serving
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    werkzeug.serving.selectors = _NoDrainSelectors()  # type: ignore[assignment]

    class KeepAliveHandler(MotoRequestHandler):
        protocol_version = "HTTP/1.1"
        # werkzeug writes the headers and the body apart: with Nagle on, the body waits
        # for the client's delayed ACK of the headers (~40 ms) once connections stay open
        disable_nagle_algorithm = True

        def run_wsgi(self) -> None:
            if REQUIRED_KEY is not None:
                self._signed_only(REQUIRED_KEY)
                return
            keep = self._keep_alive()
            if keep and FAST_PATH:
                self._dynamodb()
                return
            _NoDrainSelectors.keeping.on = keep
            try:
                super().run_wsgi()
            finally:
                _NoDrainSelectors.keeping.on = False

        def _signed_only(self, key: tuple[str, str]) -> None:
            """Only DynamoDB JSON requests signed with `key` reach moto (see 7. above)."""
            h = self.headers
            length = h.get("Content-Length") or ""
            if (not h.get("X-Amz-Target", "").startswith("DynamoDB_")
                    or not length.isdigit() or h.get("Transfer-Encoding") is not None):
                self.close_connection = True
                self._refuse(403, "AccessDeniedException",
                             "this emulator answers signed DynamoDB requests only")
                return
            body = self.rfile.read(int(length))
            error = check_signature(self.command, self.path, h, body, key)
            if error is not None:
                self._refuse(400, *error)
                return
            self._dynamodb(body)

        def _refuse(self, status: int, kind: str, message: str) -> None:
            import json

            data = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{kind}",
                               "message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dynamodb(self, body: bytes | None = None) -> None:
            """A DynamoDB JSON call straight to moto's DynamoHandler (see 5. above)."""
            if body is None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                status, headers, content = dynamodb_call(self.command, self.path,
                                                         self.headers.items(), body,
                                                         self.server.server_address)
            except Exception:  # as Flask: logged, answered 500 with werkzeug's page
                import traceback

                from werkzeug.exceptions import InternalServerError

                self.log_error("%s", traceback.format_exc())
                status, content = 500, InternalServerError().get_body()
                headers = {"Content-Type": "text/html; charset=utf-8"}
            data = content if isinstance(content, bytes) else str(content).encode("utf-8")
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("content-length", "connection",
                                       "transfer-encoding", "server", "date"):
                    self.send_header(key, str(value))
            if status != 500 and not any(k.lower() == "access-control-allow-origin"
                                         for k in headers):
                self.send_header("Access-Control-Allow-Origin", "*")  # moto's Flask CORS
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() == "connection" and value.lower() == "close" \
                    and self._keep_alive():
                return  # werkzeug's unconditional close; the response is framed
            super().send_header(keyword, value)

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            """No access log line per request: at a few hundred calls per second the
            logging lock and the write were a fifth of the emulator's time (py-spy).
            Errors are still logged (log_error)."""

        def _keep_alive(self) -> bool:
            h = self.headers
            return (h.get("X-Amz-Target", "").startswith("DynamoDB_")
                    and h.get("Content-Length") is not None
                    and h.get("Transfer-Encoding") is None
                    and h.get("Connection", "").lower() != "close")

    return KeepAliveHandler


def _fast_parse_headers(fp: Any, _class: Any = None) -> Any:
    """http.client.parse_headers without the email package's feed parser for the plain
    case (one `Name: value` per line): the same HTTPMessage, a sixth of the emulator's CPU
    per call less. Folded or malformed lines go to the email parser as before."""
    cls = _class or http.client.HTTPMessage
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]
    msg = cls()
    for raw in lines:
        if raw in (b"\r\n", b"\n", b""):
            break
        name, sep, value = raw.decode("iso-8859-1").partition(":")
        if not sep or not name or name != name.strip() or raw[:1] in (b" ", b"\t"):
            return email.parser.Parser(_class=cls).parsestr(
                b"".join(lines).decode("iso-8859-1"))
        msg[name] = value.lstrip(" \t").rstrip("\r\n")
    return msg


def speed_up_server() -> None:
    """What the server spends per request that moto recomputes needlessly (see 5.)."""
    import functools

    import moto.core.responses

    # The method names of a handler class, from inspect.getmembers on every call.
    moto.core.responses.method_names_from_class = functools.lru_cache(maxsize=None)(
        moto.core.responses.method_names_from_class)
    http.client.parse_headers = _fast_parse_headers  # type: ignore[assignment]


def _freeze_after_full_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def bound_gc_pauses() -> None:
    """Every stored item is a few dozen long-lived objects, and each full collection of
    Python's cyclic GC walks all of them while every request thread waits for the GIL:
    with tens of thousands of items the pauses grew to hundreds of milliseconds, and the
    chat's store latency tail with them. After each full collection, what survived it
    moves to the permanent generation (gc.freeze), so the next one walks only what came
    since. Items are freed by reference counting when replaced or deleted; what is
    frozen and later left in a reference cycle stays allocated: a fair price for a
    local emulator."""
    gc.callbacks.append(_freeze_after_full_collection)


def main(argv: list[str]) -> None:
    import moto.server

    patch()
    patch_cloudwatch_percentiles()
    speed_up_server()
    bound_gc_pauses()
    moto.server.MotoRequestHandler = keep_alive_handler()  # type: ignore[misc]
    moto.server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
