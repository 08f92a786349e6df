"""A child process that writes order intents to a state store, for kill and concurrency tests.

``python -m tests.resilience._state_writer DB KEYHEX BOT_ID [COUNT]`` commits intents (plus a
SUBMITTING transition and a kv update every few) forever or COUNT times, printing ``ack <cid>``
to stdout only after each intent's transaction has committed.
"""
from __future__ import annotations

import sys
from pathlib import Path

from resilience.crypto import FieldCipher
from resilience.state import NewOrder, StateStore


def main(argv: list[str]) -> int:
    db, keyhex, bot_id = argv[0], argv[1], argv[2]
    count = int(argv[3]) if len(argv) > 3 else None
    store = StateStore.open(Path(db), FieldCipher.from_keys(bytes.fromhex(keyhex)))
    print(f"ready {store.quarantined}", flush=True)
    i = 0
    while count is None or i < count:
        cid, seq = store.next_client_order_id(bot_id)
        store.add_intent(NewOrder(cid, seq, bot_id, "BTC/USDT", "buy", "limit", 0.001 * (i + 1),
                                  price=100.0, reason=f"writer {bot_id} #{i}"))
        print(f"ack {cid}", flush=True)
        if i % 3 == 0:
            store.transition(cid, "SUBMITTING", note="sent")
            store.kv_set(f"last-{bot_id}", {"i": i, "cid": cid})
        i += 1
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
