"""Reading, checking and fetching names.txt, and microgpt.py's order and initial weights."""
import shutil

import numpy as np
import pytest

from microgpt import chip, download, scalar
from microgpt.dataset import NAMES_SHA256, DatasetError, fetch_names, load_names, microgpt_order


def microgpt_reads(text):
    return [line.strip() for line in text.strip().split("\n") if line.strip()]


def write(tmp_path, content, name="names.txt"):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_real_names_file(names_path):
    names = load_names(names_path)
    assert len(names) == 32033 and names[:3] == ["emma", "olivia", "ava"]
    assert names == microgpt_reads(names_path.read_text())
    assert download.sha256_of(names_path) == NAMES_SHA256


def test_reading_rule_is_microgpts(tmp_path):
    text = "\n\n  emma \r\nolivia\n\n\tava\n \t\nzoe"
    assert load_names(write(tmp_path, text)) == microgpt_reads(text) == ["emma", "olivia", "ava", "zoe"]


@pytest.mark.parametrize("content, where, char", [
    ("emma\nzoë\n", "line 2, column 3", "'ë'"),
    ("emma\n\nOlivia\n", "line 3, column 1", "'O'"),
    ("mary ann\n", "line 1, column 5", "' '"),
    ("ava\n   jo3\n", "line 2, column 6", "'3'"),
])
def test_bad_character_names_line_column_and_rule(tmp_path, content, where, char):
    path = write(tmp_path, content)
    with pytest.raises(DatasetError) as err:
        load_names(path)
    message = str(err.value)
    assert f"{path} {where}: {char} is not a lowercase letter a-z" in message
    assert "one name per line" in message


def test_bytes_that_are_not_utf8(tmp_path):
    path = write(tmp_path, b"emma\nol\xe9a\n")
    with pytest.raises(DatasetError, match=r"line 2: bytes that are not UTF-8"):
        load_names(path)


@pytest.mark.parametrize("content", ["", "\n \n\t\n"])
def test_no_names_is_an_error(tmp_path, content):
    with pytest.raises(DatasetError, match="holds no names"):
        load_names(write(tmp_path, content))


def test_missing_file_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DatasetError) as err:
        load_names(missing)
    assert f"no such file: {missing}" in str(err.value)
    assert "leave the path out" in str(err.value)


def test_download_is_verified_then_cached(tmp_path, cache, names_path):
    upstream = tmp_path / "upstream.txt"
    shutil.copy(names_path, upstream)
    path = fetch_names(upstream.as_uri())
    assert path.parent == cache and path.read_bytes() == names_path.read_bytes()
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temp file left
    upstream.unlink()
    assert fetch_names(upstream.as_uri()) == path  # served from the cache now
    assert len(load_names()) == 32033  # the default path uses the same cache


def test_a_cached_copy_that_fails_its_hash_is_downloaded_again(tmp_path, cache, names_path):
    upstream = tmp_path / "upstream.txt"
    shutil.copy(names_path, upstream)
    cached = fetch_names(upstream.as_uri())
    cached.write_text("emma\nolivia\n")  # a stale or replaced cache must not train as makemore's names
    assert fetch_names(upstream.as_uri()) == cached and cached.read_bytes() == names_path.read_bytes()
    upstream.unlink()
    cached.write_text("emma\nolivia\n")
    with pytest.raises(DatasetError, match="could not download"):  # and never served when it cannot be mended
        fetch_names(upstream.as_uri())


def test_hash_mismatch_caches_nothing(tmp_path, cache):
    upstream = write(tmp_path, "emma\nolivia\n", "upstream.txt")
    with pytest.raises(DatasetError) as err:
        fetch_names(upstream.as_uri())
    assert f"expected {NAMES_SHA256}" in str(err.value) and "nothing was cached" in str(err.value)
    assert list(cache.iterdir()) == []


def test_download_failure_is_clear(tmp_path, cache):
    with pytest.raises(DatasetError, match="could not download"):
        fetch_names((tmp_path / "absent.txt").as_uri())
    assert list(cache.iterdir()) == []


def test_microgpt_order_matches_microgpts_setup(docs):
    ordered, init = microgpt_order(docs, 42)
    shuffled, uchars, state_dict = scalar.prepare(docs, 42)
    assert ordered == shuffled and ordered != docs and docs[0] == "emma"  # input left alone
    assert "".join(uchars) == "abcdefghijklmnopqrstuvwxyz"
    assert init.dtype == np.float64 and init.shape == (chip.N_PARAMS,)
    assert init.tolist() == [p.data for p in scalar.parameters(state_dict)]  # bit for bit
