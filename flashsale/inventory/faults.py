"""Seams for the racing and fault tests, inert unless a test sets them: a pause under a batch's row lock."""

import time

# When set, called as after_row_lock(product_id, email) right after a batch's row lock (SQLite: the
# writer lock) is granted and before stock is read, on every backend.
after_row_lock = None


def pause_under_row_lock(product_id, email, policy):
    """What a batch runs between taking the row lock and reading stock; None (the fast path) unless a
    test set after_row_lock or the policy's fault delay (honoured only when testing: HoldPolicy)."""
    if after_row_lock is None and not policy.fault_delay_in_lock_ms:
        return None

    def pause():
        if after_row_lock is not None:
            after_row_lock(product_id, email)
        if policy.fault_delay_in_lock_ms:
            time.sleep(policy.fault_delay_in_lock_ms / 1000)

    return pause
