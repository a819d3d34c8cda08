"""The hypothesis profiles: `dev` scales each suite's example count down, every other profile keeps it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.hypothesis_profiles import DEV_MIN_EXAMPLES, DEV_PROFILE, examples


@pytest.fixture
def restore_profile() -> Iterator[None]:
    before = settings.get_current_profile_name()
    yield
    settings.load_profile(before)


def test_dev_runs_a_tenth_of_each_suite_and_never_fewer_than_the_minimum(restore_profile: None) -> None:
    settings.load_profile(DEV_PROFILE)
    assert [examples(n) for n in (300, 150, 120, 25, 5)] == [30, 15, 12, DEV_MIN_EXAMPLES, 5]
    assert settings().max_examples == DEV_MIN_EXAMPLES  # a property without its own count


@pytest.mark.parametrize("profile", ["ci", "default"])
def test_ci_and_a_plain_run_keep_the_full_counts(profile: str, restore_profile: None) -> None:
    settings.load_profile(profile)
    assert [examples(n) for n in (300, 25, 5)] == [300, 25, 5]


def test_ci_is_derandomized() -> None:
    assert settings.get_profile("ci").derandomize and not settings.get_profile(DEV_PROFILE).derandomize


@pytest.mark.parametrize("profile", ["ci", DEV_PROFILE])
def test_no_example_fails_for_its_time(profile: str) -> None:
    assert settings.get_profile(profile).deadline is None
