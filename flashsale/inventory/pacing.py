"""How often a product's watchers should poll it: the server paces them, and the pages follow with jitter.

The pace depends on the sale's state (an upcoming sale an hour away needs a poll a minute; a live one
every few seconds; a sale sold out or ended far less) and on how many are watching: once the watchers
would poll more often than
`polls_per_second`, every one of them is asked to wait longer, so that however many thousands watch a
drop, their polls cost the server about the same. Watchers are counted as distinct client addresses
over the last one to two minutes (a HyperLogLog per minute, snapshot.READ_SCRIPT): a measurement, not a
feedback loop, so the pace cannot run away.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Pacing:
    """The seconds between polls by state, and the polls per second per product beyond which all slow down."""

    live: float = 3.0
    sold_out: float = 10.0
    ended: float = 300.0
    upcoming_max: float = 60.0
    near_opening: float = 2.0
    polls_per_second: float = 150.0

    @classmethod
    def from_config(cls, config):
        """Build the pacing from a Flask config mapping (POLL_* settings)."""
        return cls(config["POLL_LIVE_SECONDS"], config["POLL_SOLD_OUT_SECONDS"], config["POLL_ENDED_SECONDS"],
                   config["POLL_UPCOMING_MAX_SECONDS"], config["POLL_NEAR_OPENING_SECONDS"],
                   config["POLL_BUDGET_PER_SECOND"])

    def base(self, state, until_start):
        """The interval for a state alone: an upcoming sale is polled at a tenth of the time left."""
        if state == "upcoming":
            return min(self.upcoming_max, max(self.near_opening, until_start / 10))
        return {"live": self.live, "sold_out": self.sold_out}.get(state, self.ended)

    def seconds(self, state, until_start, watchers):
        """What a poll answer tells its watcher: the state's interval, or longer when so many watch that
        they would poll the product more than polls_per_second times a second."""
        return round(max(self.base(state, until_start), watchers / self.polls_per_second), 1)
