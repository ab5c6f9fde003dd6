import re

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


@pytest.mark.parametrize(
    "override, message",
    [
        ("classifier.learning_rate=inf", "classifier.learning_rate: Input should be a finite number"),
        ("classifier.learning_rate=.inf", "finite number"),
        ("generator.guidance_scale=.nan", "finite number"),
        ("augmented.synthetic_ratio=-.inf", "finite number"),
        ("experiments.ratios=[0.5, .nan]", "experiments.ratios.1: Input should be a finite number"),
        ("experiments.ratios=[-1]", "experiments.ratios.0: Input should be greater than or equal to 0"),
        ("generator.train_steps=true", "generator.train_steps: Input should be a valid integer (got True)"),
        ("generator.train_steps=5.0", "valid integer"),
        ("generator.learning_rate=true", "expected a number, not the boolean True"),
        ("filter.require_label_match=1", "filter.require_label_match: Input should be a valid boolean (got 1)"),
        ("experiments.aux_bn=[0]", "valid boolean"),
        ("data.seed=-1", "data.seed: Input should be greater than or equal to 0"),
        ("judge.seed=4294967296", "less than or equal to 4294967295"),
        ("experiments.seeds=[0, -3]", "experiments.seeds.1"),
        ("filter.top_k=0", "filter.top_k: Input should be greater than or equal to 1"),
        ("output.url=out/{name}", "output.url 'out/{name}' may only use the placeholder {profile}"),
        ("output.url=out/{", "may only use the placeholder {profile}"),
        ("generator.train_steps=1" + "0" * 5000, "generator.train_steps: Input should be a valid integer"),
        ("data.classes=['1', '2', '1']", "data.classes: names ['1'] more than once"),
        ("data.classes=[]", "data.classes: lists no class"),
    ],
)
def test_values_that_would_run_wrongly_are_refused(override, message):
    with pytest.raises(ProfileError, match=re.escape(message)):
        load_profile("digits", [override])


def test_numbers_still_read_as_typed():
    profile = load_profile("digits", ["generator.learning_rate=1e-3", "classifier.weight_decay=0", "data.seed=4294967295"])
    assert profile.generator.learning_rate == 0.001 and profile.classifier.weight_decay == 0.0 and profile.data.seed == 4294967295
    assert load_profile("digits", ["filter.top_k=1"]).filter.top_k == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\ndata: {source: digits\n", "is not valid YAML (line 3)"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("name: x\ndata: {source: digits}\ngenerator: 3\n", "generator"),
    ],
)
def test_broken_profile_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=re.escape(message)) as caught:
        load_profile(str(path), [])
    assert len(str(caught.value).splitlines()) == 1


def test_undecodable_profile_file_is_a_profile_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(str(path), [])


def test_override_below_a_non_mapping_names_the_setting(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\ndata: {source: digits}\ngenerator: null\n")
    with pytest.raises(ProfileError, match=r"cannot set 'generator.train_steps': the profile's generator is None, not a mapping"):
        load_profile(str(path), ["generator.train_steps=3"])


def test_errors_stay_on_one_line_and_hide_credentials():
    with pytest.raises(ProfileError) as caught:
        load_profile("digits", ['evaluation.shift_folders={"a\\nb": 1}'])
    assert len(str(caught.value).splitlines()) == 1 and "a\\nb" in str(caught.value)
    with pytest.raises(ProfileError) as caught:
        load_profile("digits", ["data.path=[https://reader:hunter22@example.com/d.parquet]"])  # a list: quoted back
    assert "hunter22" not in str(caught.value) and "https://***@example.com/d.parquet" in str(caught.value)


@pytest.mark.parametrize("section", ["judge", "classifier"])
def test_early_stopping_needs_a_validation_split(section):
    with pytest.raises(ProfileError, match=f"{section}.early_stopping_every=50 selects weights on the validation split"):
        load_profile("fashion", [f"{section}.early_stopping_every=50", "data.validation_fraction=0"])
    assert load_profile("digits", [f"{section}.early_stopping_every=50"]).model_dump()[section]["early_stopping_every"] == 50
