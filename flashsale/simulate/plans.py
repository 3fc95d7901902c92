"""Who arrives and what they do: a scenario's crowd, each buyer's plan, and how a buyer retries."""

from dataclasses import dataclass

PLANS = ("confirm", "abandon", "release")


@dataclass
class Crowd:
    """Who arrives, how, and what they do: a scenario's `crowd:` block, overridable from the CLI."""

    product: str
    buyers: int = 1000
    arrival: str = "burst"
    ramp_seconds: float = 0.0
    confirm_share: float = 0.7
    abandon_share: float = 0.2
    release_share: float = 0.1
    retry_share: float = 0.5
    quantity: int = 1
    max_retries: int = 3

    @classmethod
    def from_spec(cls, spec, **overrides):
        """A crowd from a scenario's crowd dict plus the options given (None means not given)."""
        known = {k: v for k, v in dict(spec or {}).items() if k in cls.__dataclass_fields__}
        known.update({k: v for k, v in overrides.items() if v is not None})
        crowd = cls(**known)
        if crowd.arrival not in ("burst", "ramp"):
            raise ValueError(f"arrival must be burst or ramp, not {crowd.arrival!r}")
        if crowd.buyers < 1 or crowd.quantity < 1:
            raise ValueError("buyers and quantity must be at least 1")
        return crowd


@dataclass
class Buyer:
    """One simulated shopper: when they arrive and what they do if they win a hold."""

    index: int
    email: str
    arrives_at: float
    plan: str
    retries: bool


def plan_buyers(crowd, rng, run_id):
    """The crowd's buyers: distinct emails, arrival offsets, and each one's plan and retry habit."""
    shares = [max(0.0, crowd.confirm_share), max(0.0, crowd.abandon_share), max(0.0, crowd.release_share)]
    if not sum(shares):
        shares = [0.0, 1.0, 0.0]
    buyers = []
    for i in range(crowd.buyers):
        offset = crowd.ramp_seconds * i / crowd.buyers if crowd.arrival == "ramp" else 0.0
        plan = rng.choices(PLANS, weights=shares)[0]
        buyers.append(Buyer(i, f"sim-{run_id}-{i}@example.com", offset, plan,
                            rng.random() < crowd.retry_share))
    return buyers


def buyer_address(index):
    """A distinct private address per buyer (believed only by servers with TRUSTED_PROXIES >= 1)."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def retry_after_seconds(header, default=1.0, cap=30.0):
    """Seconds to wait from a Retry-After header (delta-seconds; anything else means `default`)."""
    try:
        return min(cap, max(0.0, float(header)))
    except (TypeError, ValueError):
        return default


