"""Policy loading: validated whole, unknown keys refused, errors name the field path."""

from pathlib import Path

import pytest

from redaction.policy import MIN_STRENGTH, Policy, PolicyError, load_policy, parse_policy

CONFIG = Path(__file__).resolve().parents[1] / "config" / "policies"


def test_default_policy_is_valid_and_redacts_both_classes():
    policy = load_policy(None)
    assert set(policy.classes.enabled()) == {"face", "plate"}
    assert policy.classes.face.shape == "box"  # when unsure, redact: the whole box


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_load(path):
    assert isinstance(load_policy(path), Policy)


def test_partial_class_entry_keeps_that_class_defaults():
    policy = parse_policy({"classes": {"face": {"strength": 0.3}}})
    assert policy.classes.face.strength == 0.3
    assert policy.classes.face.shape == Policy().classes.face.shape
    assert policy.classes.face.threshold == Policy().classes.face.threshold


def test_unknown_keys_and_bad_values_name_their_paths():
    with pytest.raises(PolicyError) as info:
        parse_policy({"classes": {"face": {"method": "blurr", "colour": 1}}, "detection": {"stride": 0}}, "p.yaml")
    message = str(info.value)
    assert message.startswith("p.yaml: invalid policy\n")
    assert "classes.face.method: Input should be 'blur', 'pixelate' or 'solid'" in message
    assert "classes.face.colour: unknown key" in message
    assert "detection.stride: Input should be greater than or equal to 1" in message


def test_unknown_class_refused():
    with pytest.raises(PolicyError, match="classes.person: unknown key"):
        parse_policy({"classes": {"person": {}}})


@pytest.mark.parametrize(("cls", "method"), sorted(MIN_STRENGTH))
def test_too_weak_strength_refused(cls, method):
    floor = MIN_STRENGTH[(cls, method)]
    with pytest.raises(PolicyError, match=rf"classes\.{cls}\.strength: .* too weak for {method}"):
        parse_policy({"classes": {cls: {"method": method, "strength": floor * 0.9}}})
    assert parse_policy({"classes": {cls: {"method": method, "strength": floor}}})


def test_solid_has_no_floor_and_color_must_be_bgr():
    assert parse_policy({"classes": {"plate": {"method": "solid", "strength": 0.01}}})
    with pytest.raises(PolicyError, match="color must have 3 values"):
        parse_policy({"classes": {"plate": {"method": "solid", "color": [1, 2]}}})


def test_nothing_enabled_refused():
    with pytest.raises(PolicyError, match="at least one class must be enabled"):
        parse_policy({"classes": {"face": {"enabled": False}, "plate": {"enabled": False}}})


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(PolicyError, match="expected a mapping at the top level, got int"):
        load_policy(scalar)


def test_unmask_grants_name_known_roles_and_a_quorum():
    policy = parse_policy({"unmask": {"plate": {"roles": ["privacy-officer"], "quorum": 2}, "watermark": "optional"}})
    assert policy.unmask.face.roles == ("investigator",) and policy.unmask.face.quorum == 1
    assert policy.unmask.plate.quorum == 2 and policy.unmask.watermark == "optional"
    with pytest.raises(PolicyError, match=r"unmask\.face\.roles\.0: Input should be 'privacy-officer'"):
        parse_policy({"unmask": {"face": {"roles": ["janitor"]}}})
    with pytest.raises(PolicyError, match=r"unmask\.plate\.quorum: Input should be greater than or equal to 1"):
        parse_policy({"unmask": {"plate": {"quorum": 0}}})
    with pytest.raises(PolicyError, match=r"unmask\.face\.roles: .*at least 1"):
        parse_policy({"unmask": {"face": {"roles": []}}})
    with pytest.raises(PolicyError, match=r"retention_days: Input should be greater than or equal to 1"):
        parse_policy({"retention_days": 0})


def test_policy_roles_are_the_key_directory_roles_that_may_unmask():
    from typing import get_args

    from keys.identity import ROLES, UNMASK_ROLES
    from redaction.policy import Role

    assert get_args(Role) == UNMASK_ROLES and set(ROLES) - set(UNMASK_ROLES) == {"publisher"}


def test_the_default_policy_file_spells_out_the_built_in_default():
    """config/policies/default.yaml is documentation of ``Policy()``: they must not drift apart."""
    assert load_policy(CONFIG / "default.yaml") == Policy()


def test_a_cadence_is_a_stride_or_an_interval():
    assert Policy().detection.stride_at(30.0) == 6 and Policy().detection.stride_at(10.0) == 2
    assert Policy().detection.stride_at(29.97) == 6 and Policy().detection.stride_at(None) == 1
    strided = parse_policy({"detection": {"stride": 3}})
    assert strided.detection.interval is None and strided.detection.stride_at(30.0) == 3
    assert parse_policy(strided.model_dump(mode="json")) == strided
    with pytest.raises(PolicyError, match="stride .* or detection.interval .*not both"):
        parse_policy({"detection": {"stride": 3, "interval": 0.1}})
    with pytest.raises(PolicyError, match="detection.stride .* or detection.interval"):
        parse_policy({"detection": {"interval": None}})


def test_two_workers_with_motion_gating_are_refused_and_the_presets_that_use_them_load():
    """A second worker would plan its detection frame without what the one before found (fewer known
    regions looked at again): the policy says so instead of losing recall quietly."""
    with pytest.raises(PolicyError, match="detection.workers above 1 needs detection.motion.enabled: false"):
        parse_policy({"detection": {"workers": 2}})
    assert parse_policy({"detection": {"workers": 2, "motion": {"enabled": False}}}).detection.workers == 2
    fast = load_policy(Path(__file__).resolve().parents[1] / "config" / "policies" / "video-fast.yaml")
    assert fast.detection.workers == 2 and not fast.detection.motion.enabled
