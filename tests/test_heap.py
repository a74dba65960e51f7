"""After start-up the process's objects leave the cyclic collector's walks (runtime/heap.py, issue 17)."""

from __future__ import annotations

import gc

from msfollowup.runtime import heap


def test_settle_freezes_what_lives_and_leaves_later_objects_collectable() -> None:
    before = gc.get_freeze_count()
    try:
        kept = [[i] for i in range(1000)]  # tracked containers alive at settle(): frozen
        heap.settle()
        assert gc.get_freeze_count() >= before + 1000
        assert not any(o is kept for o in gc.get_objects())  # frozen objects are no longer walked

        class Cycle:
            pass

        a, b = Cycle(), Cycle()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        del a, b
        assert gc.collect() >= 2  # made after settle(): still collected
    finally:
        gc.unfreeze()
