"""MessageStore: the durable side of the chat, DynamoDB.

- The calls of the hot paths (send, join, history, readiness) go through chat/ddb.py, a
  small JSON-protocol client on a keep-alive connection pool; table creation goes through
  aioboto3. `CHAT_DYNAMODB_CLIENT=botocore` sends everything through aioboto3 (the old
  path). Both raise botocore's exceptions, so the handling below is the same for both.

- Each room's sequence number is an atomic ADD on the `room#<room>` counter in user-counter.
  Within one process, the ADDs of one counter are coalesced (CHAT_SEQ_BATCH, default 50):
  a send of an idle room gets its ADD 1 at once; the sends that ask for a number while that
  ADD is in flight are served together by the next `ADD n` (the counter's new value v gives
  them v-n+1 .. v, in the order they asked). DynamoDB's ADD is atomic across instances, so
  the numbers stay unique; a number handed to a send that was cancelled meanwhile is voided.
- A message is written together with the idempotency record of its client_id (connections
  table, key `dedup#<room>#<client_id>`, 10 minutes) pointing at its seq, in one
  TransactWriteItems after the ADD: two sequential calls per send, not three. A retried
  client_id finds the original seq even after a Redis restart or on another instance.
  (Twice the write capacity of two PutItems: docs/cost.md; what DynamoDB and the emulator
  do with transactions: docs/aws.md.)
- A sequence number whose write failed gets a `void` item where possible, so readers skip
  it at once.
- User ids come from the `user` counter in blocks (CHAT_USER_ID_BLOCK, default 100): one ADD
  of n leases the ids v-n+1 .. v to this instance, which hands them to its joins without a
  round trip. The next block is leased, one ADD at a time, once half of the current one is
  used. The ADD is atomic across instances, so ids stay unique across instances and
  restarts; ids leased but never handed out (an instance that stops) are gaps, never reused.
- Connection records (one per open WebSocket) are put in BatchWriteItems of up to 25: at most
  RECORD_BATCHES_MAX in flight. A lone join's record goes out at once; while a batch is in
  flight, or within RECORD_SPACING of the last one, records wait until 25 are there or the
  spacing is over, so a storm's records share full requests. UnprocessedItems are sent
  again with exponential backoff; a record still unprocessed after RECORD_ATTEMPTS fails
  like a failed PutItem (the connection is served without it).
- A join's `latest_seq` (welcome's `seq`) is a consistent GetItem of the room's counter,
  shared by the concurrent joins of the room: a join shares only a read that starts after
  it asked (the one after the read in flight), so its value is never older than its request.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aioboto3
from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .aio import SharedCalls
from .config import Config
from .ddb import DynamoDB
from .message import Message, message
from .tables import TTL_ATTRIBUTE, init_tables

DEDUP_SECONDS = 600
CONNECTION_TTL_SECONDS = 24 * 3600
STALE_CLAIM_MS = 10_000  # a claimed client_id whose message never appeared
VOID_GRACE_SECONDS = 2.0  # close() waits this long for the voids in flight
# messages_page() reads at most this many pages of one room: a run of void numbers longer than
# the pages cover shortens the answer instead of reading the table without end.
MESSAGES_MAX_PAGES = 8
QUERY_LIMIT_MAX = 1000  # the largest page messages_page() asks for
RECORD_BATCH = 25  # BatchWriteItem's limit: at most 25 put or delete requests per call
RECORD_BATCHES_MAX = 2  # connection-record BatchWriteItems in flight at once
RECORD_ATTEMPTS = 5  # sends of a record DynamoDB leaves unprocessed, the first included
RECORD_BACKOFF = 0.05  # seconds before the first resend of unprocessed records; doubles
RECORD_SPACING = 0.1  # seconds: a batch of fewer than 25 records waits this long after the last


class StoreUnavailable(Exception):
    """DynamoDB did not answer or refused; the client may retry with the same client_id."""


@dataclass
class _Waiter:
    """A send (or join) waiting for a number from its counter's next batched ADD."""
    future: asyncio.Future[int]
    room: str | None  # the room whose number it is (voided if unused); None: the user ids
    taken: list[int] | None  # the send's numbers: the number goes here before it is handed


@dataclass(frozen=True)
class Appended:
    seq: int
    ts: int
    duplicate: bool
    frame: Message | None  # the stored message; None for a duplicate


def _now_ms() -> int:
    return int(time.time() * 1000)


def item_to_message(item: dict[str, Any]) -> Message | None:
    """A messages item decoded; None for a void (skipped) number."""
    if "void" in item:
        return None
    return message(room=item["room"]["S"], seq=int(item["seq"]["N"]),
                         user_id=int(item["user_id"]["N"]), name=item["name"]["S"],
                         text=item["text"]["S"], ts=int(item["ts"]["N"]),
                         color=item["color"]["S"])


def _status_of(item: dict[str, Any] | None, client_id: str) -> str:
    """'stored' when the item is client_id's message; 'void' when it is void or another
    client_id's message (the number can never hold this one: a duplicate ack must name the
    sender's own message); 'missing' when there is no item.

    Two senders holding one number cannot happen with DynamoDB's atomic ADD, but does with
    the emulator: moto's UpdateItem is a read-modify-write without a lock, and two first
    ADDs on a new counter can both answer 1."""
    if item is None:
        return "missing"
    if "void" in item:
        return "void"
    return "stored" if item.get("client_id", {}).get("S") == client_id else "void"


class MessageStore:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._stack = AsyncExitStack()
        self._client: Any = None  # the hot calls' client: chat.ddb.DynamoDB, or aioboto3's
        self._boto: Any = None  # aioboto3's client: table creation (and all, with botocore)
        self._voiding: set[asyncio.Task[None]] = set()
        # the ADD coalescer: per counter, the waiters not yet in an ADD, and the task that
        # issues that counter's ADDs while anyone waits (none for an idle counter)
        self._waiting: dict[str, list[_Waiter]] = {}
        self._adders: dict[str, asyncio.Task[None]] = {}
        # user ids leased from the `user` counter and not handed out yet, in order, and the
        # lease (ADD) in flight, if any: one at a time, shared by every join waiting for it
        self._user_ids: deque[range] = deque()
        self._user_lease: asyncio.Task[None] | None = None
        # latest_seq's reads, shared per room by the joins that asked before each started
        self._latest_seq = SharedCalls[int](self._read_latest_seq, self._closed_read)
        # connection records waiting for a BatchWriteItem, and the batches in flight
        self._records: list[tuple[dict[str, Any], asyncio.Future[str]]] = []
        self._record_batches: set[asyncio.Task[None]] = set()
        self._records_sent_at = -1e9  # loop time the last batch went out
        self._records_timer: asyncio.TimerHandle | None = None  # a short batch's due time
        self._closing = False
        self.messages = config.table_messages
        self.connections = config.table_connections
        self.counters = config.table_user_counter
        self.last_ok = 0.0  # monotonic time of the last answered call
        self.last_error = 0.0  # ... and of the last failed one

    async def start(self) -> None:
        botocore_session = get_session()
        session = aioboto3.Session(botocore_session=botocore_session)
        boto_config = BotoConfig(connect_timeout=2, read_timeout=5,
                                 retries={"max_attempts": 2, "mode": "standard"},
                                 max_pool_connections=50)
        self._boto = await self._stack.enter_async_context(session.client(
            "dynamodb", region_name=self.config.aws_region,
            endpoint_url=self.config.dynamodb_endpoint, config=boto_config))
        if self.config.dynamodb_client == "botocore":
            self._client = self._boto
            return
        # the endpoint and region botocore resolved (config, AWS_ENDPOINT_URL*, the regional
        # default), the credentials of botocore's chain (refreshed when refreshable)
        self._client = await self._stack.enter_async_context(DynamoDB(
            endpoint_url=self._boto.meta.endpoint_url, region=self._boto.meta.region_name,
            credentials=await botocore_session.get_credentials(),
            connect_timeout=2, read_timeout=5, max_attempts=2, max_connections=50))

    async def close(self) -> None:
        # No task outlives the store: the batched ADDs, the latest-seq reads, the user-id
        # lease and the connection-record batches in flight are cancelled (their waiters
        # fail with StoreUnavailable, as a send whose ADD timed out; a record left unwritten
        # or undeleted expires by its TTL), then the voids
        # already started get up to VOID_GRACE_SECONDS to land before the client closes (a
        # number left unvoided is fenced by the rooms after gap_skip, as after a crash).
        self._closing = True
        adders = list(self._adders.values())
        adders.extend(self._record_batches)
        if self._user_lease is not None:
            adders.append(self._user_lease)
        for task in adders:
            task.cancel()
        await asyncio.gather(*adders, return_exceptions=True)
        await self._latest_seq.close()
        if self._records_timer is not None:
            self._records_timer.cancel()
            self._records_timer = None
        records, self._records = self._records, []
        for _, future in records:
            if not future.done():
                future.set_exception(StoreUnavailable("the store is closing"))
        if self._voiding:
            await asyncio.wait(list(self._voiding), timeout=VOID_GRACE_SECONDS)
            pending = list(self._voiding)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("MessageStore.start() was not awaited")
        return self._client

    async def init_tables(self) -> list[str]:
        if self._boto is None:
            raise RuntimeError("MessageStore.start() was not awaited")
        return await init_tables(self.config, self._boto)

    async def _call(self, op: str, **kwargs: Any) -> Any:
        try:
            result = await getattr(self.client, op)(**kwargs)
        except (TimeoutError, BotoCoreError, ClientError, OSError) as e:
            self.last_error = time.monotonic()
            raise StoreUnavailable(f"{op}: {e}") from e
        self.last_ok = time.monotonic()
        return result

    def answered_recently(self, seconds: float) -> bool:
        """DynamoDB answered a call within `seconds` and nothing failed since.

        Readiness relies on this when the instance is busy: an active probe would wait
        behind the traffic it proves is flowing (and time out, taking a healthy but busy
        instance out of the load balancer)."""
        return time.monotonic() - self.last_ok < seconds and self.last_ok > self.last_error

    async def ping(self) -> None:
        """Raise StoreUnavailable unless DynamoDB answers a cheap read."""
        await self._call("get_item", TableName=self.counters, Key={"name": {"S": "user"}})

    async def _add(self, counter: str, n: int = 1) -> int:
        """Add n to the counter; its new value v (this call owns v-n+1 .. v)."""
        r = await self._call(
            "update_item", TableName=self.counters, Key={"name": {"S": counter}},
            UpdateExpression="ADD #n :one", ExpressionAttributeNames={"#n": "n"},
            ExpressionAttributeValues={":one": {"N": str(n)}}, ReturnValues="UPDATED_NEW")
        return int(r["Attributes"]["n"]["N"])

    async def _number(self, counter: str, room: str | None = None,
                      taken: list[int] | None = None) -> int:
        """The counter's next number, from an ADD shared with the concurrent callers.

        `taken` receives the number before it is handed over, so a caller cancelled
        after the number arrived still finds it there (append voids it); a caller
        cancelled before gets no number, and one that arrives for it anyway is voided
        here (`room`). An error of the ADD fails every caller of that batch."""
        if self.config.seq_batch <= 1:  # CHAT_SEQ_BATCH=0: one ADD per caller
            seq = await self._add(counter)
            if taken is not None:
                taken.append(seq)
            return seq
        if self._closing:
            raise StoreUnavailable("the store is closing")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), room, taken)
        self._waiting.setdefault(counter, []).append(waiter)
        if counter not in self._adders:  # an idle counter: its ADD goes out now
            self._adders[counter] = loop.create_task(self._run_adds(counter))
        return await waiter.future

    async def _run_adds(self, counter: str) -> None:
        """Issue the counter's ADDs while callers wait: each takes all the waiters that
        asked meanwhile, at most CHAT_SEQ_BATCH of them.

        Why a cap: an ADD that fails fails its whole batch, and one that timed out after
        DynamoDB applied it leaves its numbers unvoided (readers fence them after
        gap_skip); 50 also matches the client's connection pool, so a larger batch could
        not write its messages at once anyway."""
        batch: list[_Waiter] = []
        try:
            while True:
                queue = [w for w in self._waiting.get(counter, ()) if not w.future.done()]
                if not queue:  # idle again; no await since the check: nobody slips by
                    self._waiting.pop(counter, None)
                    return
                cap = self.config.seq_batch
                batch, self._waiting[counter] = queue[:cap], queue[cap:]
                try:
                    top = await self._add(counter, len(batch))
                except Exception as e:  # every waiter of the batch gets it
                    for w in batch:
                        if not w.future.done():
                            w.future.set_exception(
                                StoreUnavailable(str(e)) if isinstance(e, StoreUnavailable)
                                else e)
                    batch = []
                    continue
                first = top - len(batch) + 1
                for i, w in enumerate(batch):
                    self._hand(w, first + i)
                batch = []
        finally:
            if self._adders.get(counter) is asyncio.current_task():
                del self._adders[counter]
            # cancelled (the store closes): nobody may wait for an ADD that will not come
            for w in batch + self._waiting.pop(counter, []):
                if not w.future.done():
                    w.future.set_exception(StoreUnavailable("the store is closing"))

    def _hand(self, waiter: _Waiter, seq: int) -> None:
        if waiter.future.cancelled():  # the caller gave up while the ADD was in flight
            if waiter.room is not None:
                self._void_soon(waiter.room, seq)
            return
        if waiter.taken is not None:
            waiter.taken.append(seq)
        waiter.future.set_result(seq)

    def _void_soon(self, room: str, seq: int) -> None:
        task = asyncio.get_running_loop().create_task(self._void(room, seq))
        self._voiding.add(task)
        task.add_done_callback(self._voiding.discard)

    async def next_user_id(self) -> int:
        """A user id no other connection of any instance gets (CHAT_USER_ID_BLOCK).

        From the block this instance leased: no round trip, except while no leased id is
        left (the first join, or a storm faster than a lease): then the join waits for the
        lease in flight, which every waiting join shares. With a block of 1: one id per
        ADD, the ADDs of concurrent joins coalesced like sends' (CHAT_SEQ_BATCH)."""
        block = self.config.user_id_block
        if block <= 1:
            return await self._number("user")
        while True:
            if self._closing:
                raise StoreUnavailable("the store is closing")
            ids = self._user_ids
            if ids:
                first = ids[0]
                if len(first) > 1:
                    ids[0] = first[1:]
                else:
                    ids.popleft()
                if sum(map(len, ids)) < block // 2:
                    self._lease_user_ids()  # before the block runs out
                return first.start
            # nothing leased: wait for the lease in flight (shielded: a join that gives up
            # does not cancel the others' lease); if it failed, every waiter fails with it
            lease = self._lease_user_ids()
            try:
                await asyncio.shield(lease)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if lease.cancelled() and me is not None and not me.cancelling():
                    raise StoreUnavailable("the store is closing") from None  # close()
                raise

    def _lease_user_ids(self) -> asyncio.Task[None]:
        """The lease in flight, or a new one: one ADD of CHAT_USER_ID_BLOCK ids."""
        task = self._user_lease
        if task is None:
            task = self._user_lease = asyncio.get_running_loop().create_task(
                self._lease(self.config.user_id_block), name="user-id-lease")
            task.add_done_callback(self._leased)
        return task

    async def _lease(self, n: int) -> None:
        top = await self._add("user", n)
        self._user_ids.append(range(top - n + 1, top + 1))

    def _leased(self, task: asyncio.Task[None]) -> None:
        self._user_lease = None
        if not task.cancelled():
            task.exception()  # a failed prefetch nobody waited for: the next join retries

    async def latest_seq(self, room: str) -> int:
        """The last sequence number assigned in the room (0 for a new room), as a
        consistent read that started after this call: every number assigned before the
        call is counted. Concurrent callers of a room share the next such read."""
        if self._closing:
            raise StoreUnavailable("the store is closing")
        return await self._latest_seq(room)

    @staticmethod
    def _closed_read(room: str) -> int:
        raise StoreUnavailable("the store is closing")

    async def _read_latest_seq(self, room: str) -> int:
        r = await self._call("get_item", TableName=self.counters,
                             Key={"name": {"S": f"room#{room}"}}, ConsistentRead=True)
        item = r.get("Item")
        return int(item["n"]["N"]) if item else 0

    def _dedup_key(self, room: str, client_id: str) -> dict[str, Any]:
        return {"connection_id": {"S": f"dedup#{room}#{client_id}"}}

    async def _dedup(self, room: str, client_id: str) -> tuple[int, int] | None:
        """(seq, claimed_at ms) of a live idempotency record, if any."""
        r = await self._call("get_item", TableName=self.connections,
                             Key=self._dedup_key(room, client_id), ConsistentRead=True)
        item = r.get("Item")
        if item and int(item["expires_at"]["N"]) > int(time.time()):
            return int(item["seq"]["N"]), int(item["claimed_at"]["N"])
        return None

    def _claim_put(self, room: str, client_id: str, seq: int, replaces: int | None
                   ) -> dict[str, Any]:
        """The idempotency record pointing `client_id` at `seq`, as a conditional Put: taken
        only if no live record exists (`replaces` None), or only from the record that points
        at `replaces` (a resend taking over a failed first attempt)."""
        now = int(time.time())
        if replaces is None:
            cond = "attribute_not_exists(connection_id) OR expires_at < :now"
            values = {":now": {"N": str(now)}}
        else:
            cond = "seq = :old"
            values = {":old": {"N": str(replaces)}}
        return {"TableName": self.connections,
                "Item": {**self._dedup_key(room, client_id), "seq": {"N": str(seq)},
                         "claimed_at": {"N": str(_now_ms())},
                         "expires_at": {"N": str(now + DEDUP_SECONDS)},
                         TTL_ATTRIBUTE: {"N": str(now + DEDUP_SECONDS + 60)}},
                "ConditionExpression": cond, "ExpressionAttributeValues": values}

    async def _commit(self, room: str, client_id: str, seq: int, replaces: int | None,
                      item: dict[str, Any]) -> bool:
        """The idempotency record and the message `item` (number `seq`) in one
        TransactWriteItems: both are written, or neither.

        True when both are stored. False when the record's condition failed (a live record
        of this client_id points at another number) or DynamoDB cancelled the transaction
        for a conflict with another request on one of the two items (TransactionConflict):
        the caller voids `seq` and looks at the record. StoreUnavailable when only the
        message's condition failed (the number is fenced or voided: the sender is answered
        `unavailable` and its retry gets a new number) or DynamoDB did not answer.

        The ClientRequestToken makes the client's own retry of this call (after a timeout
        or a 5xx) idempotent on DynamoDB for 10 minutes: a first attempt that did commit is
        answered as a success, not as a cancellation by its own writes."""
        message_put = {"TableName": self.messages, "Item": item,
                       "ConditionExpression": "attribute_not_exists(seq)"}
        try:
            await self.client.transact_write_items(
                TransactItems=[{"Put": self._claim_put(room, client_id, seq, replaces)},
                               {"Put": message_put}],
                ClientRequestToken=uuid.uuid4().hex)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                self.last_ok = time.monotonic()  # DynamoDB answered
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
                claim, stored = [*reasons, "None", "None"][:2]
                if claim == "ConditionalCheckFailed" or "TransactionConflict" in reasons:
                    return False
                if stored == "ConditionalCheckFailed":
                    raise StoreUnavailable(f"number {seq} of {room} is fenced") from e
            self.last_error = time.monotonic()
            raise StoreUnavailable(f"transact_write_items: {e}") from e
        except (TimeoutError, BotoCoreError, OSError) as e:
            self.last_error = time.monotonic()
            raise StoreUnavailable(f"transact_write_items: {e}") from e
        self.last_ok = time.monotonic()
        return True

    async def _status(self, room: str, seq: int, client_id: str) -> str:
        """'stored', 'void' or 'missing' for one sequence number, from `client_id`'s view."""
        r = await self._call("get_item", TableName=self.messages, ConsistentRead=True,
                             Key={"room": {"S": room}, "seq": {"N": str(seq)}})
        return _status_of(r.get("Item"), client_id)

    async def append(self, *, room: str, user_id: int, name: str, text: str, client_id: str,
                     color: str) -> Appended:
        """Store a message under the room's next seq, or find the seq of its first send.

        Normal path, two calls: the atomic ADD, then one transaction writing the idempotency
        record (claimed only if no live record exists) and the message (only if the number
        holds no item: a fenced number stays void). A record therefore exists only with its
        message. A resend finds the record: if its message is stored, the first seq is
        returned (never stored twice); if that attempt failed (void, or missing for longer
        than STALE_CLAIM_MS: a record written alone by an older version) this send takes the
        record over; if it is still in flight, this waits for it (bounded). A number this
        send took and cannot use is marked void, so readers skip it at once.
        """
        taken: list[int] = []
        try:
            return await self._append(room=room, user_id=user_id, name=name, text=text,
                                      client_id=client_id, color=color, taken=taken)
        except BaseException:
            # Stopped half-way (the connection closed and its handler was cancelled, or a
            # call failed): void the number now, or every room waits gap_skip for it. The
            # void is conditional, so a message that did get stored stays.
            for seq in taken:
                self._void_soon(room, seq)
            raise

    async def _append(self, *, room: str, user_id: int, name: str, text: str,
                      client_id: str, color: str, taken: list[int]) -> Appended:
        deadline = time.monotonic() + 5.0
        replaces: int | None = None
        while True:
            seq = await self._number(f"room#{room}", room, taken)
            ts = _now_ms()
            item = {"room": {"S": room}, "seq": {"N": str(seq)},
                    "user_id": {"N": str(user_id)}, "name": {"S": name},
                    "text": {"S": text}, "ts": {"N": str(ts)}, "color": {"S": color},
                    "client_id": {"S": client_id}}
            if await self._commit(room, client_id, seq, replaces, item):
                return Appended(seq, ts, False, message(
                    room=room, seq=seq, user_id=user_id, name=name, text=text, ts=ts,
                    color=color))
            await self._void(room, seq)
            while True:
                held = await self._dedup(room, client_id)
                if held is None:
                    replaces = None
                    break
                first, claimed_at = held
                status = await self._status(room, first, client_id)
                if status == "stored":
                    return Appended(first, 0, True, None)
                if status == "missing" and _now_ms() - claimed_at > STALE_CLAIM_MS:
                    # the first attempt may still land: fence its number before taking over
                    if _status_of(await self._fence(room, first), client_id) == "stored":
                        return Appended(first, 0, True, None)
                    status = "void"
                if status == "void":
                    replaces = first
                    break
                if time.monotonic() > deadline:
                    raise StoreUnavailable("an earlier send of this client_id is in flight")
                await asyncio.sleep(0.1)
            if time.monotonic() > deadline:  # conflicts every time: give up, the client retries
                raise StoreUnavailable("the send's transaction kept being cancelled")

    async def fence(self, room: str, seq: int) -> Message | None:
        """Settle a number a reader will not wait for any longer: void it unless its message
        is already stored. Returns that message, or None when the number is void.

        After a fence, the late writer's conditional put fails and its sender is answered
        `unavailable` (the retry gets a new number): no send is ever acknowledged under a
        number that a room skipped. Raises StoreUnavailable when DynamoDB cannot say.
        """
        item = await self._fence(room, seq)
        return item_to_message(item) if item else None

    async def _put_void(self, room: str, seq: int) -> None:
        """Write `seq` as a void item, only if no item holds that number yet."""
        await self.client.put_item(
            TableName=self.messages,
            Item={"room": {"S": room}, "seq": {"N": str(seq)}, "void": {"BOOL": True},
                  "ts": {"N": str(_now_ms())}},
            ConditionExpression="attribute_not_exists(seq)")

    async def _fence(self, room: str, seq: int) -> dict[str, Any] | None:
        """fence() as the raw item: None when this call voided the number."""
        try:
            await self._put_void(room, seq)
            return None
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise StoreUnavailable(f"put_item: {e}") from e
        except (TimeoutError, BotoCoreError, OSError) as e:
            raise StoreUnavailable(f"put_item: {e}") from e
        r = await self._call("get_item", TableName=self.messages, ConsistentRead=True,
                             Key={"room": {"S": room}, "seq": {"N": str(seq)}})
        item: dict[str, Any] | None = r.get("Item")
        return item

    async def _void(self, room: str, seq: int) -> None:
        """Mark a number whose message will never exist (best effort)."""
        try:
            await self._put_void(room, seq)
        except (TimeoutError, BotoCoreError, ClientError, OSError):
            pass

    def _room_query(self, room: str, since: int | None) -> dict[str, Any]:
        """Query parameters for a room's items after `since` (oldest first), or its latest
        (newest first) without `since`."""
        return {
            "TableName": self.messages, "ConsistentRead": True,
            "KeyConditionExpression": "room = :r AND seq > :s",
            "ExpressionAttributeValues": {":r": {"S": room},
                                          ":s": {"N": str(since if since is not None else 0)}},
            "ScanIndexForward": since is not None,
        }

    async def query(self, room: str, *, since: int | None, limit: int) -> list[dict[str, Any]]:
        """DynamoDB items (voids included): the first `limit` after `since`, else the
        latest. Readers outside the store use `entries` (decoded)."""
        items: list[dict[str, Any]] = []
        kwargs = self._room_query(room, since)
        while len(items) < limit:
            r = await self._call("query", Limit=limit - len(items), **kwargs)
            items.extend(r.get("Items", []))
            if "LastEvaluatedKey" not in r:
                break
            kwargs["ExclusiveStartKey"] = r["LastEvaluatedKey"]
        items.sort(key=lambda it: int(it["seq"]["N"]))
        return items

    async def entries(self, room: str, *, since: int | None, limit: int
                      ) -> list[tuple[int, Message | None]]:
        """query() decoded: (seq, message), the message None for a void number."""
        return [(int(it["seq"]["N"]), item_to_message(it))
                for it in await self.query(room, since=since, limit=limit)]

    async def messages_page(self, room: str, *, since: int | None, limit: int
                            ) -> list[Message]:
        """Message frames, oldest first: the first `limit` messages with seq > `since`, or
        the latest `limit` without `since`. Void numbers are skipped and not counted.

        Each page asks for the messages still missing plus as many items as there were
        voids so far (voids are rare: one per resend whose original was stored, or per
        failed write), so a room without voids costs the one query it always did. At most
        MESSAGES_MAX_PAGES pages are read; only a longer run of voids than they cover
        returns fewer than `limit` messages although more exist."""
        found: list[Message] = []
        voids = 0
        kwargs = self._room_query(room, since)
        for _ in range(MESSAGES_MAX_PAGES):
            page = min(QUERY_LIMIT_MAX, limit - len(found) + voids)
            r = await self._call("query", Limit=page, **kwargs)
            for it in r.get("Items", []):
                msg = item_to_message(it)
                if msg is None:
                    voids += 1
                elif len(found) < limit:
                    found.append(msg)
            if len(found) >= limit or "LastEvaluatedKey" not in r:
                break
            kwargs["ExclusiveStartKey"] = r["LastEvaluatedKey"]
        found.sort(key=lambda m: int(m["seq"]))
        return found

    async def range(self, room: str, first: int, last: int) -> dict[int, Message | None]:
        """Numbers first <= seq <= last that have an item: seq -> message (None: void)."""
        found: dict[int, Message | None] = {}
        if last < first:
            return found
        kwargs: dict[str, Any] = {
            "TableName": self.messages, "ConsistentRead": True,
            "KeyConditionExpression": "room = :r AND seq BETWEEN :a AND :b",
            "ExpressionAttributeValues": {":r": {"S": room}, ":a": {"N": str(first)},
                                          ":b": {"N": str(last)}},
        }
        while True:
            r = await self._call("query", **kwargs)
            for it in r.get("Items", []):
                found[int(it["seq"]["N"])] = item_to_message(it)
            if "LastEvaluatedKey" not in r:
                return found
            kwargs["ExclusiveStartKey"] = r["LastEvaluatedKey"]

    async def add_connection(self, *, user_id: int, room: str, instance: str, color: str,
                             version: str) -> str:
        """Put the connection's record (in a batch with the concurrent ones); its id."""
        if self._closing:
            raise StoreUnavailable("the store is closing")
        connection_id = uuid.uuid4().hex
        now = int(time.time())
        item = {
            "connection_id": {"S": connection_id}, "user_id": {"N": str(user_id)},
            "room": {"S": room}, "instance": {"S": instance}, "color": {"S": color},
            "version": {"S": version}, "connected_at": {"N": str(_now_ms())},
            TTL_ATTRIBUTE: {"N": str(now + CONNECTION_TTL_SECONDS)}}
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._records.append((item, future))
        self._send_records()
        return await future

    def _send_records(self) -> None:
        """Start BatchWriteItems of the waiting records while fewer than
        RECORD_BATCHES_MAX are in flight: full ones (25) at once, a short one only when
        none is in flight and RECORD_SPACING has passed since the last went out (a timer
        sends it then; the end of the one in flight calls this again)."""
        loop = asyncio.get_running_loop()
        while self._records and len(self._record_batches) < RECORD_BATCHES_MAX:
            if len(self._records) < RECORD_BATCH:
                if self._record_batches:
                    return
                due = self._records_sent_at + RECORD_SPACING
                if due > loop.time():
                    if self._records_timer is None:
                        self._records_timer = loop.call_at(due, self._records_due)
                    return
            batch = self._records[:RECORD_BATCH]
            del self._records[:RECORD_BATCH]
            self._records_sent_at = loop.time()
            task = loop.create_task(self._write_records(batch), name="connection-records")
            self._record_batches.add(task)
            task.add_done_callback(self._records_written)

    def _records_due(self) -> None:
        self._records_timer = None
        if not self._closing:
            self._send_records()

    def _records_written(self, task: asyncio.Task[None]) -> None:
        self._record_batches.discard(task)
        if not self._closing:
            self._send_records()

    async def _write_records(self, batch: list[tuple[dict[str, Any], asyncio.Future[str]]]
                             ) -> None:
        requests = [{"PutRequest": {"Item": item}} for item, _ in batch]
        failed: BaseException | None = None
        try:
            delay = RECORD_BACKOFF
            for attempt in range(RECORD_ATTEMPTS):
                if attempt:  # DynamoDB asks to back off exponentially before a resend
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay *= 2
                r = await self._call("batch_write_item",
                                     RequestItems={self.connections: requests})
                requests = r.get("UnprocessedItems", {}).get(self.connections, [])
                if not requests:
                    break
        except BaseException as e:
            failed = e
            raise
        finally:
            left = {req["PutRequest"]["Item"]["connection_id"]["S"] for req in requests}
            for item, future in batch:
                if future.done():
                    continue
                connection_id = item["connection_id"]["S"]
                if failed is not None:
                    future.set_exception(failed if isinstance(failed, StoreUnavailable)
                                         else StoreUnavailable(f"batch_write_item: {failed!r}"))
                elif connection_id in left:
                    future.set_exception(StoreUnavailable(
                        f"batch_write_item: still unprocessed after {RECORD_ATTEMPTS} tries"))
                else:
                    future.set_result(connection_id)

    async def remove_connection(self, connection_id: str) -> None:
        await self._call("delete_item", TableName=self.connections,
                         Key={"connection_id": {"S": connection_id}})
