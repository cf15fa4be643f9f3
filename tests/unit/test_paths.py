"""Path rules: normalisation, overlap and protection (SPEC 2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchq.core.paths import PathError, components, is_protected, normalise, overlaps
from batchq.errors import InputError
from batchq.settings import DEFAULT_PROTECTED


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("src/a.py", "src/a.py"),
        ("./src/a.py", "src/a.py"),
        ("src//a.py", "src/a.py"),
        ("src/./a.py", "src/a.py"),
        ("src/", "src/"),
        ("./src//", "src/"),
        ("src/lib/../a.py", "src/a.py"),
        ("src/.", "src/"),
        ("a/b/..", "a/"),
    ],
)
def test_normalise_gives_the_canonical_posix_spelling(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", ["/etc/passwd", "/", "C:/x", "C:\\x"])
def test_absolute_paths_are_refused(raw: str) -> None:
    with pytest.raises(PathError, match="absolute"):
        normalise(raw)


@pytest.mark.parametrize("raw", ["..", "../x", "a/../../b", "./../a"])
def test_escapes_out_of_the_root_are_refused(raw: str) -> None:
    with pytest.raises(PathError, match=r"escapes the project root"):
        normalise(raw)


@pytest.mark.parametrize("raw", ["", "  ", ".", "./", "a/.."])
def test_empty_paths_and_the_root_itself_are_refused(raw: str) -> None:
    with pytest.raises(PathError):
        normalise(raw)


def test_path_errors_are_input_errors_and_value_errors_naming_the_path() -> None:
    with pytest.raises(PathError) as caught:
        normalise("../secrets")
    assert isinstance(caught.value, InputError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == "../secrets"
    assert "'../secrets'" in str(caught.value)
    assert "expected" in caught.value.reason


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("src/", "src/a.py"),
        ("./a", "a"),
        ("src", "src/"),
        ("src/a.py", "src//a.py"),
        ("src/a", "src/a/b.py"),
        ("x/../src/", "src/deep/file.txt"),
    ],
)
def test_equal_paths_and_folder_prefixes_overlap(a: str, b: str) -> None:
    assert overlaps(a, b)
    assert overlaps(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [("src/a", "src/ab"), ("src/a.py", "src/b.py"), ("lib/", "src/"), ("a/b", "b/a")],
)
def test_siblings_and_shared_name_prefixes_do_not_overlap(a: str, b: str) -> None:
    assert not overlaps(a, b)


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        (".git/config", ".git/"),
        (".git", ".git/"),
        ("vendor/lib/.git/HEAD", ".git/"),
        ("node_modules/x/index.js", "node_modules/"),
        ("web/node_modules/", "node_modules/"),
        (".env", "*.env*"),
        ("config/.env.local", "*.env*"),
        ("prod.env", "*.env*"),
        ("deploy/PROD.ENV", "*.env*"),
        ("certs/server.key", "*.key"),
        ("api.secret", "*.secret"),
        ("./certs//server.key", "*.key"),
    ],
)
def test_default_patterns_protect_what_gitignore_would(path: str, pattern: str) -> None:
    assert is_protected(path, DEFAULT_PROTECTED) == pattern


@pytest.mark.parametrize(
    "path", ["src/a.py", "environment.py", "keys/readme.md", "src/gitignore", "docs/key.md"]
)
def test_ordinary_paths_are_not_protected(path: str) -> None:
    assert is_protected(path, DEFAULT_PROTECTED) is None


def test_patterns_with_an_inner_slash_anchor_to_the_root() -> None:
    assert is_protected("config/secrets/db.yml", ["config/secrets"]) == "config/secrets"
    assert is_protected("app/config/secrets/db.yml", ["config/secrets"]) is None
    assert is_protected("config/secrets", ["/config/secrets/"]) == "/config/secrets/"


def test_double_star_spans_any_number_of_folders() -> None:
    assert is_protected("a/b/c/id.pem", ["**/*.pem"]) == "**/*.pem"
    assert is_protected("id.pem", ["**/*.pem"]) == "**/*.pem"
    assert is_protected("infra/x/y/tfstate", ["infra/**/tfstate"]) == "infra/**/tfstate"
    assert is_protected("infra/tfstate", ["infra/**/tfstate"]) == "infra/**/tfstate"


def test_empty_patterns_protect_nothing_and_a_list_works_like_a_tuple() -> None:
    assert is_protected(".env", []) is None
    assert is_protected(".env", ["", "  "]) is None
    assert is_protected(".env", ["*.env*"]) == "*.env*"


def test_protection_checks_refuse_absolute_paths() -> None:
    with pytest.raises(PathError):
        is_protected("/home/me/.env", DEFAULT_PROTECTED)


segments = st.sampled_from(["src", "a", "b.py", "ab", ".", "..", "", "lib"])
paths = st.lists(segments, min_size=1, max_size=5).map("/".join)


@given(paths)
def test_normalise_is_idempotent_or_refuses(path: str) -> None:
    try:
        once = normalise(path)
    except PathError:
        return
    assert normalise(once) == once
    assert not once.startswith(("/", "./"))
    assert "//" not in once


@given(paths, paths)
def test_overlap_is_symmetric_and_means_a_component_prefix(a: str, b: str) -> None:
    try:
        pa, _ = components(a)
        pb, _ = components(b)
    except PathError:
        return
    expected = pa[: len(pb)] == pb or pb[: len(pa)] == pa
    assert overlaps(a, b) == overlaps(b, a) == expected


def test_hashing_and_matching_fill_no_component_cache() -> None:
    """What asks once per path (a running batch's deliverables, hashed and matched)
    splits without the cache planning fills: through it, a 20,000-member batch held
    7 MiB of tuples under its report."""
    components.cache_clear()
    assert normalise("src/./new/a.py") == "src/new/a.py"
    assert is_protected("src/new/.env", DEFAULT_PROTECTED) is not None
    assert is_protected("src/new/b.py", DEFAULT_PROTECTED) is None
    assert components.cache_info().currsize == 0
    assert components("src/new/a.py") == (("src", "new", "a.py"), False)
    assert components.cache_info().currsize == 1
