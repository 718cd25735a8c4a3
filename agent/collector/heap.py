"""The collector's processes live for weeks, and most of what they hold is made at start-up: modules,
the application, the engine, SQLAlchemy's tables. Python's cyclic garbage collector traverses all of it
again at every collection of the oldest generation, and a busy collector triggers such collections by the
garbage of its requests.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect, then move every object alive now into the garbage collector's permanent generation
    (`gc.freeze`, https://docs.python.org/3/library/gc.html#gc.freeze), which later collections skip.
    Call it once a process has started, before it serves: under load, about a tenth less CPU per report
    (bench/ingest_wrk.py; docs/scale.md, section 2, "Seventh pass"). Objects made later are collected as
    before; a frozen object that becomes garbage is still freed by its reference count, unless it is in
    a reference cycle."""
    gc.collect()
    gc.freeze()
