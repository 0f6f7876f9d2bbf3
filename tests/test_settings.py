"""IGPO's settings rules (igpo/settings.py): one place for allowed values, one line per bad key."""

import pytest

from igpo.settings import IGPO_CHOICES, RULES, SettingError, check_settings


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("reward_mode", "bogus", "one of 'f1+ig', 'f1', 'ig'"),
        ("norm", "zscore", "one of 'separate', 'joint'"),
        ("ig_basis", "probability", "one of 'logprob', 'prob'"),
        ("ig_source", "old", "one of 'recompute', 'none'"),
        ("gamma", 1.5, "a number in [0, 1]"),
        ("gamma", -0.1, "a number in [0, 1]"),
        ("lr", 0.0, "a number > 0"),
        ("steps", 0, "an integer >= 1"),
        ("steps", "abc", "an integer >= 1"),
        ("steps", 2.5, "an integer >= 1"),
        ("group_size", 1, "an integer >= 2"),
        ("temperature", float("nan"), "a number > 0"),
        ("test_fraction", 1.0, "a number in (0, 1)"),
        ("answer_template", "no placeholder", "a string containing '{answer}'"),
        ("format_penalty", 0.5, "a number <= 0"),
    ],
)
def test_bad_value_is_one_line_naming_key_value_and_allowed(key, value, allowed):
    with pytest.raises(SettingError) as e:
        check_settings({key: value}, {key: f"algorithm.igpo.{key}"})
    assert str(e.value) == f"algorithm.igpo.{key}={value!r} is not allowed: expected {allowed}"


def test_good_values_pass_and_each_bad_key_gets_its_own_line():
    check_settings({"reward_mode": "f1", "gamma": 1, "steps": 1, "group_size": 2, "lr": 1e-6, "other": "x"})
    with pytest.raises(SettingError) as e:
        check_settings({"reward_mode": "x", "group_size": 0, "lr": 1e-3})
    assert len(str(e.value).splitlines()) == 2


def test_booleans_are_not_numbers_and_none_only_where_optional():
    with pytest.raises(SettingError, match="steps=True"):
        check_settings({"steps": True})
    with pytest.raises(SettingError, match="steps=None"):
        check_settings({"steps": None})
    check_settings({"steps": None}, optional={"steps"})


def test_choices_are_derived_from_the_rules():
    assert IGPO_CHOICES["reward_mode"] == RULES["reward_mode"].choices
