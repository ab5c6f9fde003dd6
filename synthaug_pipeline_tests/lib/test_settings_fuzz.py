"""Settings cannot go wrong silently: random `--set` values and profile files either validate or are one ProfileError line."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from synthaug_pipeline.lib.config import Profile, ProfileError, _Section, load_profile


def _field_paths(model: type = Profile, prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            paths += _field_paths(annotation, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


FIELD_PATHS = _field_paths()
FIELD_NAMES = sorted({path.rpartition(".")[2] for path in FIELD_PATHS})
PLANTED = "pl4nted-S3CRET"  # must never be echoed back in an error

YAML_SCALARS = [
    ".inf", "-.inf", ".nan", ".NaN", "inf", "-inf", "nan", "Infinity", "1e400", "-1e400",
    "true", "false", "yes", "no", "on", "off", "True", "null", "~", "",
    "0", "-1", "1", "2", "3", "5", "1.5", "0.5", "-0.0", "1e-3", "4294967296", "99999999999999999999",
    "[]", "{}", "[1, 2]", "[.nan]", "[true]", "[-1]", "[0, 0.5]", "{full: [0, .inf]}", "{a: 1}", "{a: [b]}",
    "ddpm", "ddim", "digits", "folder", "cpu", "png", "x{y}", "{profile}/x", "0 3 * * *",
    "'quoted'", "{", "[", "]", "&a [*a]", "!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "- a",
    "a: b: c", "\t", "%TAG", "@", "`", f"https://user:{PLANTED}@example.com/d.parquet",
    "1" + "0" * 5000, "[" * 3000 + "]" * 3000, "[a, a]", "['']", "{full: [1], full: [2]}",
]

scalar_text = st.one_of(
    st.sampled_from(YAML_SCALARS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=20),
)
override_value = st.one_of(
    scalar_text,
    st.lists(scalar_text.filter(lambda s: "," not in s and "]" not in s), max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
)
yaml_value = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**40), max_value=2**40), st.floats(), st.text(max_size=12),
        st.sampled_from(["digits", "folder", "ddpm", "png", "{profile}"]),
    ),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8,
)


def _assert_one_line(error: ProfileError) -> None:
    message = str(error)
    assert message and len(message.splitlines()) == 1, message
    assert "Traceback" not in message and PLANTED not in message, message


def _assert_nothing_silently_wrong(profile: Profile) -> None:
    """A profile that validated holds no inf/nan anywhere."""

    def walk(value):
        if isinstance(value, float):
            assert math.isfinite(value), profile
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(profile.model_dump())


def _load(name: str, overrides: list[str]) -> Profile | None:
    try:
        profile = load_profile(name, overrides)
    except ProfileError as error:
        event("refused")
        _assert_one_line(error)
        return None
    event("validated")
    _assert_nothing_silently_wrong(profile)
    return profile


def test_every_field_path_is_covered():
    assert len(FIELD_PATHS) > 80 and "classifier.learning_rate" in FIELD_PATHS and "filter.top_k" in FIELD_PATHS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELD_PATHS), value=override_value)
def test_random_set_values_validate_or_fail_in_one_line(path, value):
    _load("digits", [f"{path}={value}"])


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from(FIELD_PATHS), value=st.sampled_from([".inf", "-.inf", ".nan", "inf", "nan", "true", "false"]))
def test_non_finite_and_boolean_values_never_pass_as_numbers(path, value):
    profile = _load("digits", [f"{path}={value}"])
    if profile is not None and value in ("true", "false"):  # accepted only by a boolean field
        section, _, field = path.rpartition(".")
        target = getattr(profile, section) if section else profile
        assert isinstance(getattr(target, field), bool), path


@settings(max_examples=150, deadline=None)
@given(
    sections=st.dictionaries(
        st.sampled_from([*Profile.model_fields, "nope"]),
        st.one_of(st.dictionaries(st.sampled_from([*FIELD_NAMES, "nope"]), yaml_value, max_size=4), yaml_value),
        max_size=5,
    )
)
def test_random_profile_files_validate_or_fail_in_one_line(sections):
    raw = {"name": "fuzz", "data": {"source": "digits"}, **sections}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        _load(str(path), [])


@settings(max_examples=100, deadline=None)
@given(text=st.one_of(st.text(max_size=60), st.sampled_from(["{", "a: [", "- x", "a: !!python/name:os.system", "\x00", ":", "name: [a"])))
def test_random_profile_text_validates_or_fails_in_one_line(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, errors="surrogatepass")
        _load(str(path), [])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(path=st.sampled_from(FIELD_PATHS), value=override_value)
def test_cli_refuses_invalid_settings_in_one_line_and_writes_nothing(path, value, tmp_path, monkeypatch, capsys):
    from synthaug_pipeline.cli import main

    item = f"{path}={value}"
    try:
        load_profile("digits", [item])
    except ProfileError:
        event("refused: run through the CLI")
    else:
        return  # a valid setting would start a real run: the other tests cover what validates
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    capsys.readouterr()
    assert main(["run", "--set", item]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("synthaug: error: ") and len(err.splitlines()) == 1, err
    assert PLANTED not in captured.err + captured.out
    assert list(tmp_path.iterdir()) == []  # no output folder, no .dagster_home
