"""The output preflight on local paths: nothing is written, a path that cannot become a folder is one line."""

import pytest

from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.storage import OutputNotWritableError, check_output_writable


def test_a_new_local_output_passes_without_being_created(tmp_path):
    check_output_writable(load_profile("digits", [f"output.url={tmp_path / 'a' / 'b'}"]))
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_is_one_line(tmp_path):
    (tmp_path / "report.txt").write_text("not a folder")
    with pytest.raises(OutputNotWritableError, match=r"report.txt is not a writable folder") as refused:
        check_output_writable(load_profile("digits", [f"output.url={tmp_path / 'report.txt' / 'out'}"]))
    assert "\n" not in str(refused.value)
