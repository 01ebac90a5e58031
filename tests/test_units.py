"""Durations and sizes as users write them: every unit, and one clear line for anything else."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edgecap.errors import InputError
from edgecap.units import parse_duration, parse_size


@pytest.mark.parametrize("text, expected", [
    ("45s", timedelta(seconds=45)),
    ("90m", timedelta(minutes=90)),
    ("12h", timedelta(hours=12)),
    ("30d", timedelta(days=30)),
    ("2w", timedelta(days=14)),
    (" 1.5H ", timedelta(minutes=90)),
    ("7 d", timedelta(days=7)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("", "expected a number and a unit"),
    ("30", "expected a number and a unit"),
    ("30y", "expected a number and a unit"),
    ("-2h", "expected a number and a unit"),
    ("1e3s", "expected a number and a unit"),
    ("2h ago", "expected a number and a unit"),
    ("0d", "is zero"),
    ("0.0s", "is zero"),
    ("99999999999w", "too large"),
    (30, "expected a number and a unit"),
])
def test_parse_duration_rejects_in_one_line(text, fragment):
    with pytest.raises(InputError, match=fragment) as info:
        parse_duration(text)
    assert "\n" not in str(info.value)


def test_a_zero_age_is_allowed_where_asked_for():
    assert parse_duration("0s", allow_zero=True) == timedelta(0)


@pytest.mark.parametrize("text, expected", [
    ("20GB", 20_000_000_000),
    ("500MB", 500_000_000),
    ("1.5GiB", 1_610_612_736),
    ("64 KiB", 65_536),
    ("1tb", 10**12),
    ("2TiB", 2 * 2**40),
    ("4096", 4096),
    ("10B", 10),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("", "expected a number and an optional unit"),
    ("GB", "expected a number and an optional unit"),
    ("20 gigabytes", "expected a number and an optional unit"),
    ("-5GB", "expected a number and an optional unit"),
    ("1e9", "expected a number and an optional unit"),
    ("0GB", "zero"),
    ("0.1B", "out of range"),
    ("9" * 400 + "TB", "out of range"),
    (None, "expected a number and an optional unit"),
])
def test_parse_size_rejects_in_one_line(text, fragment):
    with pytest.raises(InputError, match=fragment) as info:
        parse_size(text)
    assert "\n" not in str(info.value)
