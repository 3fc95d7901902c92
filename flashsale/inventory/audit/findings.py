"""What an audit finds: a Breach, each check's Finding (how many, and a bounded sample), the Report."""

from dataclasses import dataclass, field
from datetime import datetime

SAMPLE = 20  # breaches shown per check; the count is always exact


@dataclass(frozen=True)
class Breach:
    """One broken invariant: which, where, and what was found."""

    invariant: str
    subject: str
    detail: str

    def __str__(self):
        return f"[{self.invariant}] {self.subject}: {self.detail}"


def check(invariant):
    """Mark a function of an AuditView as a check of `invariant` (e.g. "1 no oversell").

    The function returns (count, sample): how many rows break the invariant, and up to view.sample of
    them as Breaches.
    """

    def mark(function):
        function.invariant = invariant
        return function

    return mark


class Sample:
    """Breaches of one invariant as a check finds them in Python (e.g. walking a provider's list): all
    counted, the first `limit` kept; result() is the check's (count, sample)."""

    def __init__(self, invariant, limit):
        self.invariant, self.limit, self.count, self.breaches = invariant, limit, 0, []

    def add(self, subject, detail):
        self.count += 1
        if len(self.breaches) < self.limit:
            self.breaches.append(Breach(self.invariant, subject, detail))

    def result(self):
        return self.count, self.breaches


@dataclass(frozen=True)
class Finding:
    """What one check found: how many rows break its invariant, and a sample of them."""

    check: str
    invariant: str
    count: int
    sample: tuple = ()


@dataclass(frozen=True)
class Report:
    """One audit: the instant it read (database clock), its scope, how long it took, what each check found."""

    at: datetime
    scope: str
    seconds: float
    findings: tuple = field(default_factory=tuple)

    @property
    def passed(self):
        return not any(finding.count for finding in self.findings)

    @property
    def breaches(self):
        """Every sampled breach, check by check."""
        return [breach for finding in self.findings for breach in finding.sample]

    @property
    def count(self):
        """Breaches found in all (the samples may show fewer)."""
        return sum(finding.count for finding in self.findings)

    def by_invariant(self):
        """{invariant: breaches found}, for every invariant checked (0 when sound)."""
        counts = {}
        for finding in self.findings:
            counts[finding.invariant] = counts.get(finding.invariant, 0) + finding.count
        return counts
