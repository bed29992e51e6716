"""One lock for moto's DynamoDB table state.

moto's server runs each request in its own thread. Every write request holds this lock from
parsing to the serialised answer (atomic_writes), and the range index of indexed_query is
maintained and read under it, so a Query's candidates never see half of a write. Reentrant:
a write request's put_item takes it again inside.
"""

from __future__ import annotations

import threading

WRITE_LOCK = threading.RLock()
