"""Bad input on the command line: one clear line, non-zero exit, nothing written."""

import pytest

from synthaug_pipeline.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--profile", "nope"], "unknown profile 'nope'"),
        (["run", "--set", "generator.stepz=5"], "unknown setting 'generator.stepz'"),
        (["run", "--set", "generator.train_steps=many"], "generator.train_steps"),
        (["run", "--set", "generator.guidance_scale=-1"], "generator.guidance_scale"),
        (["run", "--profile", "folder"], "data.path is not set"),
        (["run", "--profile", "folder", "--set", "data.path=/no/such/folder"], "does not exist"),
        (["run", "--profile", "fashion", "--set", "data.classes=[shoe]"], "does not have"),
        (["run", "--classes", "11"], "unknown classes"),
        (["dev", "--profile", "nope"], "unknown profile"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthaug: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_profiles_lists_packaged_profiles(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "fashion" in out and "folder" in out
