"""The cyclic garbage collector's view of a started process.

By the time a node listens, its process holds a quarter to a third of a million objects that live as
long as it does: modules, pydicom's data dictionary, SQLAlchemy's metadata and compiled statements,
FastAPI's routes. Python's collector walks all of them on every full collection, and ingest makes
enough short-lived containers (data sets, rows, frames) to trigger one every few hundred instances:
while case (c) of benchmarks/ingest.py was received, `perf` put `gc_collect_main` and its helpers at
~9% of the node's CPU (~1% with this).

`settle()` moves everything alive at that moment into the permanent generation (`gc.freeze`), so
later collections walk only what was made since. Reference counting still frees a frozen object that
is let go; only a reference cycle among frozen objects would never be collected. Hence once, after
start-up, following a full collection: what start-up leaves behind is what the process keeps.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once, then keep every surviving object out of later collections (see module doc)."""
    gc.collect()
    gc.freeze()
