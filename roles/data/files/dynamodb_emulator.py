"""The local target's DynamoDB and AWS emulator: moto's server with our patches of moto.

    dynamodb_emulator.py -H HOST -p PORT      (the arguments of `moto_server`)

Each patch is a module of the moto_patches package beside this file (its docstring says what
it fixes and which test proves it): table_id, indexed_query, atomic_writes, transact_writes
(the table patches, `patch()`), cloudwatch_percentiles, keep_alive with sigv4_key and
fast_path (the request handler), gc_pauses. Environment: EMULATOR_ACCESS_KEY_ID and
EMULATOR_SECRET_ACCESS_KEY (sigv4_key: only requests signed with that key are answered),
EMULATOR_FAST_PATH=0 (fast_path: every request through werkzeug and Flask).

The role roles/data copies this file and moto_patches/ to the runtime directory.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts this directory on sys.path; loaded by path (tests), it is put
# there here, so `moto_patches` is found either way.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from moto_patches import (  # noqa: E402
    atomic_writes,
    cloudwatch_percentiles,
    gc_pauses,
    indexed_query,
    keep_alive,
    table_id,
    transact_writes,
)
from moto_patches import fast_path as fast_path  # noqa: E402


def patch() -> None:
    """Install the DynamoDB table patches into moto (idempotent)."""
    table_id.install()
    indexed_query.install()
    atomic_writes.install()
    transact_writes.install()


def main(argv: list[str]) -> None:
    import moto.server

    patch()
    cloudwatch_percentiles.install()
    fast_path.speed_up_server()
    gc_pauses.install()
    moto.server.MotoRequestHandler = keep_alive.handler()  # type: ignore[misc]
    moto.server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
