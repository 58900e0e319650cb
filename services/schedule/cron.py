"""Cron expressions (five fields, evaluated in UTC) and the next time one fires: pure functions.

Fields are ``minute hour day-of-month month day-of-week`` with ``*``, numbers, ranges ``a-b``,
steps ``*/n`` and ``a-b/n``, lists ``a,b``, month and weekday names (``jan``, ``mon``) and the
shorthands ``@hourly @daily @weekly @monthly @yearly``. As in Vixie cron, when both day fields
are restricted a day matches if either does. Sunday is 0 (7 is accepted too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_SHORTHANDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, lowest, highest, names starting at `lowest`)
_FIELDS: tuple[tuple[str, int, int, list[str]], ...] = (
    ("minute", 0, 59, []),
    ("hour", 0, 23, []),
    ("day of month", 1, 31, []),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)
# An expression that does not fire within this horizon (e.g. "0 0 30 2 *") is refused.
HORIZON = timedelta(days=5 * 366)


class CronError(ValueError):
    """An invalid cron expression; the message names the field and the bad part."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day-of-month is '*'
    any_weekday: bool  # day-of-week is '*'

    def day_matches(self, t: datetime) -> bool:
        weekday = (t.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0
        dom, dow = t.day in self.days, weekday in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return dow
        if self.any_weekday:
            return dom
        return dom or dow


def _value(text: str, *, field: str, lo: int, hi: int, names: list[str]) -> int:
    low = text.lower()
    if low in names:
        return names.index(low) + (1 if field == "month" else 0)
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number{' or a name' if names else ''}")
    n = int(text)
    if not lo <= n <= hi:
        raise CronError(f"{field}: {n} is outside {lo}-{hi}")
    return n


def _parse_field(text: str, *, field: str, lo: int, hi: int, names: list[str]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, b = base.split("-", 1)
            start = _value(a, field=field, lo=lo, hi=hi, names=names)
            end = _value(b, field=field, lo=lo, hi=hi, names=names)
            if start > end:
                raise CronError(f"{field}: range {base!r} runs backwards")
        elif base:
            start = _value(base, field=field, lo=lo, hi=hi, names=names)
            end = hi if step_text else start
        else:
            raise CronError(f"{field}: empty item in {text!r}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_cron(expr: str) -> Cron:
    """Parse ``expr``; raises :class:`CronError` naming the bad field (or an expression that never fires)."""
    text = _SHORTHANDS.get(expr.strip().lower(), expr.strip())
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    sets = [
        _parse_field(p, field=name, lo=lo, hi=hi, names=names)
        for p, (name, lo, hi, names) in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(
        expr=expr,
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        any_day=parts[2] == "*",
        any_weekday=parts[4] == "*",
    )
    if next_fire(cron, after=datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise CronError(f"{expr!r} never fires (no such date)")
    return cron


def next_fire(cron: Cron, *, after: datetime) -> datetime | None:
    """The first minute strictly after ``after`` (UTC) at which ``cron`` fires; None beyond the horizon."""
    t = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = t + HORIZON
    while t < limit:
        if t.month not in cron.months:
            t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
        elif not cron.day_matches(t):
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
        elif t.hour not in cron.hours:
            t = t.replace(minute=0) + timedelta(hours=1)
        elif t.minute not in cron.minutes:
            t += timedelta(minutes=1)
        else:
            return t
    return None
