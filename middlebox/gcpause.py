"""Pausing Python's cyclic garbage collector around bulk work.

Building or reading 100k migration records (each a dict with lists) would
otherwise set off full collections over everything the daemon holds, again
and again.  Stdlib only, so the migration channel can use it too.
"""

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection meanwhile; afterwards what was built is
    moved to the oldest generation (``promote_young``)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            promote_young()
            gc.enable()


def promote_young():
    """Move every object the collector tracks into its oldest generation,
    without traversing them (two list splices): what a pause built is
    long-lived state (entries, flows, records), and would otherwise be
    traversed by the young collections that re-enabling the collector sets
    off at once (over a second at 100k connections).  Nothing is lost: a
    cycle among them is still collected, by the next full collection.  Not
    done when something else froze objects (``gc.freeze``): they stay frozen."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()
