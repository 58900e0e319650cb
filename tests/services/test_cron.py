from datetime import UTC, datetime

import pytest

from radforge.services.schedule.cron import CronError, next_fire, parse_cron


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "expr, after, expected",
    [
        ("*/15 * * * *", "2026-11-27 10:07", "2026-11-27 10:15"),
        ("*/15 * * * *", "2026-11-27 10:15", "2026-11-27 10:30"),  # strictly after
        ("0 2 * * *", "2026-11-27 02:00:30", "2026-11-28 02:00"),
        ("30 6 * * mon-fri", "2026-11-27 07:00", "2026-11-30 06:30"),  # Friday 07:00 -> Monday
        ("0 0 1 * *", "2026-12-15 00:00", "2027-01-01 00:00"),  # across a year
        ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),  # next leap day
        ("0 12 13 * 5", "2026-11-27 13:00", "2026-12-04 12:00"),  # day-of-month OR Friday (Vixie)
        ("0 0 * * 7", "2026-11-27 00:00", "2026-11-29 00:00"),  # 7 is Sunday too
        ("15 10-12/2 * jan,dec *", "2026-11-27 00:00", "2026-12-01 10:15"),
        ("@hourly", "2026-11-27 10:59", "2026-11-27 11:00"),
        ("@weekly", "2026-11-27 10:00", "2026-11-29 00:00"),
    ],
)
def test_next_fire(expr: str, after: str, expected: str) -> None:
    assert next_fire(parse_cron(expr), after=t(after)) == t(expected)


def test_next_fire_converts_other_timezones_to_utc() -> None:
    from datetime import timedelta, timezone

    after = datetime(2026, 11, 27, 12, 0, tzinfo=timezone(timedelta(hours=2)))  # 10:00 UTC
    assert next_fire(parse_cron("30 10 * * *"), after=after) == t("2026-11-27 10:30")


@pytest.mark.parametrize(
    "expr, words",
    [
        ("* * * *", "expected 5 fields"),
        ("61 * * * *", "minute: 61 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("*/0 * * * *", "minute: step '0' must be a positive number"),
        ("5-1 * * * *", "minute: range '5-1' runs backwards"),
        ("0 0 30 2 *", "never fires"),
        ("1,,2 * * * *", "minute: empty item"),
    ],
)
def test_parse_errors_name_the_field(expr: str, words: str) -> None:
    with pytest.raises(CronError, match=words.replace("(", r"\(").replace("*", r"\*")):
        parse_cron(expr)
