"""One transaction for the batches that several threads of a process hold at once, for different products.

A web process serves many buyers on its threads. With one product on sale, the product's line already
gathers its buyers into batches (batches.py); with many products on sale at once each product's line
holds a buyer or two, and each would pay a whole transaction. So a holder hands its product's batch to
the process's combiner: if no transaction is running, it runs one for its own batch; if one is, it
waits, and the next one serves every batch handed in meanwhile, each still under its own product's
Redis lock, with the products' rows locked in id order. Alone, a batch is served at once; under load
the transactions grow with the load instead of multiplying (flat combining, as in a database's group
commit).
"""

import threading
import weakref

MAX_BATCHES = 32  # batches served by one transaction (a process has fewer threads than this)

_combiners = weakref.WeakKeyDictionary()
_combiners_lock = threading.Lock()


def combiner(engine):
    """The combiner of this process for this database engine."""
    with _combiners_lock:
        found = _combiners.get(engine)
        if found is None:
            found = _combiners[engine] = Combiner()
        return found


class _Entry:
    __slots__ = ("item", "done", "outcome", "error")

    def __init__(self, item):
        self.item, self.done, self.outcome, self.error = item, False, None, None


class Combiner:
    """Serves items (each with a product_id) handed in by several threads, with one call of
    serve_together per round.

    A second item of a product already waiting or being served (the product's Redis lock lapsed
    under a slow holder) is not combined: it is served alone, in its own transaction, at once, and
    the product's row lock decides between the two as it would between two processes.
    """

    def __init__(self):
        self._changed = threading.Condition()
        self._waiting = []
        self._products = set()  # of the items waiting or being served
        self._busy = False

    def run(self, item, serve_together):
        """This item's outcome from serve_together(items) -> [outcome per item], run by whichever
        thread is free first. An outcome that is an exception is raised in its item's thread, and an
        exception serve_together raises in the thread of every item it was serving."""
        entry = _Entry(item)
        with self._changed:
            alone = item.product_id in self._products
            if not alone:
                self._products.add(item.product_id)
                self._waiting.append(entry)
                while self._busy and not entry.done:
                    self._changed.wait()
                serving = not entry.done
                if serving:
                    self._busy = True
                    self._waiting.remove(entry)
                    entries = [entry, *self._waiting[:MAX_BATCHES - 1]]
                    del self._waiting[:MAX_BATCHES - 1]
        if alone:
            entries, serving = [entry], True
        if serving:
            self._serve(entries, serve_together, alone)
        if entry.error is not None:
            raise entry.error
        if isinstance(entry.outcome, BaseException):
            raise entry.outcome
        return entry.outcome

    def _serve(self, entries, serve_together, alone):
        try:
            for served, outcome in zip(entries, serve_together([e.item for e in entries]), strict=True):
                served.outcome = outcome
        except BaseException as error:  # noqa: BLE001 - raised again in each thread it was for
            for served in entries:
                served.error = error
        finally:
            if not alone:
                with self._changed:
                    for served in entries:
                        served.done = True
                        self._products.discard(served.item.product_id)
                    self._busy = False
                    self._changed.notify_all()
