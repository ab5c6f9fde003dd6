"""Secrets never leak and unsafe calls never creep in.

A static scan of the package for unsafe calls; the redaction helpers; and a real tiny run that reads its
data through a URL holding a planted password, after which no file, database row or line of output
holds it.
"""

from __future__ import annotations

import ast
import io
import json
import sqlite3
import zlib
from pathlib import Path

import pytest

import synthaug_pipeline
from synthaug_pipeline.lib.redaction import MASK, redact_settings, redact_url, redact_urls, seal_overrides, unseal_override

PACKAGE = Path(synthaug_pipeline.__file__).parent


# --- static safety scan -----------------------------------------------------------------------------------


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Calls that run code from data: shell=True, yaml.load without SafeLoader, torch.load without
    weights_only=True, pickle loads, eval/exec, os.system, trust_remote_code=True."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        dotted = ast.unparse(func)
        where = f"{filename}:{node.lineno}: {ast.unparse(node)[:80]}"
        if _is_true(_keyword(node, "shell")) or _is_true(_keyword(node, "trust_remote_code")):
            found.append(where)
        elif isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__"):
            found.append(where)
        elif dotted in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "Safe" not in ast.unparse(loader):
                found.append(where)
        elif dotted in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all", "os.system", "os.popen"):
            found.append(where)
        elif dotted == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            found.append(where)
        elif dotted in ("pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load"):
            found.append(where)
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "subprocess.run('ls', shell=True)",
        "yaml.load(text)",
        "yaml.load(text, Loader=yaml.Loader)",
        "yaml.full_load(text)",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "eval(user_input)",
        "exec(code)",
        "pickle.loads(blob)",
        "AutoModel.from_pretrained(name, trust_remote_code=True)",
        "os.system(cmd)",
    ],
)
def test_scan_flags_unsafe_calls(snippet):
    assert unsafe_calls(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "yaml.safe_load(text)",
        "yaml.load(text, Loader=yaml.SafeLoader)",
        "torch.load(p, weights_only=True)",
        "model.eval()",
        "subprocess.call(cmd)",
    ],
)
def test_scan_passes_safe_calls(snippet):
    assert unsafe_calls(snippet) == []


def test_package_has_no_unsafe_calls():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    found = [hit for file in files for hit in unsafe_calls(file.read_text(), str(file.relative_to(PACKAGE.parent)))]
    assert found == []


# --- redaction ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("s3://AKIA:wJalr@bucket/x", "s3://***@bucket/x"),
        ("see https://token@host.example/a?b=1 and memory://u:p@b/c", "see https://***@host.example/a?b=1 and memory://***@b/c"),
        ("'https://u:p@h/x'", "'https://***@h/x'"),
        ("/plain/path@v2 and s3://bucket/key@1 and user@example.com", "/plain/path@v2 and s3://bucket/key@1 and user@example.com"),
        ("file:///tmp/out", "file:///tmp/out"),
    ],
)
def test_redact_url_masks_userinfo_only(text, expected):
    assert redact_url(text) == expected


def test_redact_url_masks_secret_environment_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # not a secret: stays
    assert redact_url("key wJalrXUtnFEMI/K7MDENG in eu-west-1") == f"key {MASK} in eu-west-1"


def test_redact_settings_masks_secret_names_and_urls():
    settings = {
        "output": {"url": "s3://K:S@b/o", "storage_options": {"key": "AKIA", "secret": "S", "token": None, "endpoint_url": "http://m:9"}},
        "client_kwargs": {"aws_secret_access_key": "S", "Api-Token": "T"},
        "overrides": ["output.storage_options.secret=S", "generator.train_steps=3"],
        "experiment": {"seeds": [0, 1]},
    }
    assert redact_settings(settings) == {
        "output": {"url": "s3://***@b/o", "storage_options": {"key": MASK, "secret": MASK, "token": None, "endpoint_url": "http://m:9"}},
        "client_kwargs": {"aws_secret_access_key": MASK, "Api-Token": MASK},
        "overrides": [f"output.storage_options.secret={MASK}", "generator.train_steps=3"],
        "experiment": {"seeds": [0, 1]},
    }
    assert redact_urls({"key": "experiment key stays", "uri": ["s3://K:S@b/x"]}) == {"key": "experiment key stays", "uri": ["s3://***@b/x"]}


def test_sealed_overrides_keep_secrets_out_of_dagster_resource_config():
    from synthaug_pipeline.definitions import build_definitions

    item = "data.seed=1"
    secret_item = "generator.model=https://reader:s3aled-pw@hub.example/model"
    sealed = seal_overrides([item, secret_item])
    assert sealed[0] == item and "s3aled-pw" not in sealed[1] and sealed == seal_overrides([item, secret_item])  # stable
    assert unseal_override(sealed[1]) == secret_item
    with pytest.raises(KeyError):
        unseal_override("x=<sealed:0000000000000000>")
    settings = build_definitions("digits", [item, secret_item]).resources["settings"]
    assert "s3aled-pw" not in json.dumps(settings.overrides)
    assert settings.load().generator.model == "https://reader:s3aled-pw@hub.example/model"  # the run still gets the real value


def test_dev_binds_localhost_unless_told(tmp_path, monkeypatch):
    from synthaug_pipeline import cli

    commands = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command, env: commands.append(command) or 0)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dev"]) == 0
    assert cli.main(["dev", "--host", "0.0.0.0", "--port", "3001"]) == 0
    assert commands[0][-4:] == ["-p", "3000", "-h", "127.0.0.1"]
    assert commands[1][-4:] == ["-p", "3001", "-h", "0.0.0.0"]


# --- a real run with a planted secret -------------------------------------------------------------------

SECRET = "pl4ntedPassw0rd"
ENV_SECRET = "envS3cretAccessKey0123"


def _texts_of(path: Path) -> list[bytes]:
    """Every byte string a file holds: the file, and for SQLite every cell, zlib-compressed blobs decompressed."""
    data = path.read_bytes()
    texts = [data]
    try:
        texts.append(zlib.decompress(data))
    except zlib.error:
        pass
    if data.startswith(b"SQLite format 3"):
        with sqlite3.connect(path) as db:
            for (table,) in db.execute("select name from sqlite_master where type='table'").fetchall():
                for row in db.execute(f'select * from "{table}"'):
                    for cell in row:
                        cell = cell.encode() if isinstance(cell, str) else cell
                        if isinstance(cell, bytes):
                            texts.append(cell)
                            try:
                                texts.append(zlib.decompress(cell))
                            except zlib.error:
                                pass
    return texts


def files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and any(needle in text for text in _texts_of(p))]


def test_scanner_finds_a_compressed_secret_in_sqlite(tmp_path):
    with sqlite3.connect(tmp_path / "x.db") as db:
        db.execute("create table t (blob)")
        db.execute("insert into t values (?)", (zlib.compress(f"{{'a': '{SECRET}'}}".encode()),))
    assert files_holding(tmp_path, SECRET) == [str(tmp_path / "x.db")]


def _digits_parquet(url: str) -> None:
    import fsspec
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = [], []
    for image, label in zip(digits.images, digits.target, strict=True):
        if label in (0, 1):
            buffer = io.BytesIO()
            Image.fromarray((image * 15.9).astype(np.uint8), "L").save(buffer, format="PNG")
            images.append(buffer.getvalue())
            labels.append(str(label))
    with fsspec.open(url, "wb") as handle:
        pq.write_table(pa.table({"image": images, "label": labels}), handle)


@pytest.mark.slow
def test_a_run_reading_a_credentialed_url_records_no_secret(tmp_path, monkeypatch, capsys):
    import fsspec

    from synthaug_pipeline.cli import main
    from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides

    data_url = f"memory://reader:{SECRET}@bucket/digits01.parquet"
    _digits_parquet(data_url)
    memory = fsspec.filesystem("memory")
    output, home = tmp_path / "output", tmp_path / "home"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    fewer_steps = ["generator.train_steps=3", "generator.warmup_steps=1", "generator.sample_steps=2", "judge.steps=3", "classifier.steps=3"]
    overrides = [
        *tiny_overrides(str(output)),
        *fewer_steps,
        f"data.path={data_url}",
        "data.image_size=8",
        "data.channels=1",
        "data.test_fraction=0.3",
    ]
    argv = ["run", "--profile", "folder", "--dagster-home", str(home)] + [arg for item in overrides for arg in ("--set", item)]
    try:
        assert main(argv) == 0
        captured = capsys.readouterr()
        report = json.loads((output / "report.json").read_text())
        # the run read its data through the credentialed URL, and recorded that URL without the password
        assert report["dataset"]["dataset"] == "digits01.parquet" and report["dataset"]["class_ids"] == ["0", "1"]
        assert report["profile"]["data"]["path"] == "memory://***@bucket/digits01.parquet"
        assert sorted(p.name for p in home.iterdir() if p.suffix == ".db" or p.is_dir())  # the instance was written
        written_to_memory = [p for p in memory.find("/") if not p.endswith("digits01.parquet")]
        for secret in (SECRET, ENV_SECRET):
            assert files_holding(tmp_path, secret) == []
            assert secret not in captured.out and secret not in captured.err
            assert not any(secret.encode() in memory.cat_file(p) for p in written_to_memory)
    finally:
        memory.rm(f"/reader:{SECRET}@bucket", recursive=True)
