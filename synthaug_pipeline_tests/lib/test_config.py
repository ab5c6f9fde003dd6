import pytest

from synthaug_pipeline.lib.config import ProfileError, available_profiles, load_profile


def test_packaged_profiles_all_validate():
    names = available_profiles()
    assert {"digits", "fashion", "folder"} <= set(names)
    for name in names:
        assert load_profile(name, []).name == name


def test_overrides_are_typed_and_nested():
    profile = load_profile("digits", ["generator.train_steps=7", "data.classes=['1', '2']", "filter.require_label_match=false"])
    assert profile.generator.train_steps == 7
    assert profile.data.classes == ["1", "2"]
    assert profile.filter.require_label_match is False


def test_environment_selects_profile_and_overrides(monkeypatch):
    monkeypatch.setenv("SYNTHAUG_PROFILE", "fashion")
    monkeypatch.setenv("SYNTHAUG_SET", "generator.images_per_class=3;judge.steps=2")
    profile = load_profile()
    assert profile.name == "fashion" and profile.generator.images_per_class == 3 and profile.judge.steps == 2


def test_profile_from_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndata:\n  source: digits\n")
    assert load_profile(str(path), []).output_url == "synthaug_output/mine"


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("nope", [], "unknown profile 'nope'"),
        ("digits", ["generator.nope=1"], "unknown setting 'generator.nope'"),
        ("digits", ["nope=1"], "unknown setting 'nope'"),
        ("digits", ["generator.train_steps=abc"], "generator.train_steps"),
        ("digits", ["generator.train_steps=0"], "greater than or equal to 1"),
        ("digits", ["generator.sampler=magic"], "generator.sampler"),
        ("digits", ["generator=3"], "is a section"),
        ("digits", ["train_steps"], "is not key=value"),
        ("digits", ["evaluation.severities=[9]"], "severities"),
        ("digits", ["generator.block_out_channels=[32]"], "at least two"),
    ],
)
def test_bad_profiles_name_the_problem(name, overrides, message):
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_profile(name, overrides)
