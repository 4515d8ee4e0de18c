"""Input enumeration of ``quasar score``: directories, globs, lists, stdin."""
from __future__ import annotations

import io

import pytest

import hostile  # noqa: E402

from quasar.runtime.inputs import InputError, check_specs, is_image_name, iter_inputs  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    good = hostile.write_good_tree(root)
    return root, good


def test_directory_walk_is_recursive_sorted_and_skips_hidden(tree):
    root, good = tree
    got = list(iter_inputs([str(root)]))
    assert got == [str(p) for p in good]
    assert not any("/." in p for p in got)
    assert not any(p.endswith((".txt", ".md")) for p in got)


def test_extensions_case_insensitive():
    assert is_image_name("x.JPG") and is_image_name("y.Tiff") and is_image_name("z.webp")
    assert not is_image_name("notes.txt") and not is_image_name("noext")


def test_walk_is_lazy(tree):
    root, good = tree
    it = iter_inputs([str(root)])
    assert next(it) == str(good[0])  # a generator: nothing materialised up front


def test_explicit_files_missing_files_and_order(tree):
    root, good = tree
    missing = str(root / "nope.png")
    specs = [str(good[3]), missing, str(root / "notes.txt"), str(good[0])]
    # explicit files are kept whatever their extension; missing ones too (-> not_found rows)
    assert list(iter_inputs(specs)) == specs


def test_glob_plain_and_recursive(tree):
    root, good = tree
    got = list(iter_inputs([str(root / "*.png")]))
    assert got == sorted(str(p) for p in good if p.parent == root and p.suffix == ".png")
    rec = list(iter_inputs([str(root / "**" / "*.webp")]))
    assert set(rec) == {str(p) for p in good if p.suffix == ".webp"}
    assert list(iter_inputs([str(root / "zzz*.png")])) == []  # no match: warning, nothing


def test_list_file_and_stdin(tree, tmp_path):
    root, good = tree
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\n" + str(good[1]) + "\n\n" + str(good[0]) + "\r\n" + "weird [name].png\n")
    assert list(iter_inputs(["@" + str(lst)])) == [str(good[1]), str(good[0]), "weird [name].png"]
    stdin = io.StringIO(str(good[2]) + "\n" + str(good[4]) + "\n")
    assert list(iter_inputs(["-", str(good[5])], stdin=stdin)) == [str(good[2]), str(good[4]), str(good[5])]


def test_bad_specs():
    with pytest.raises(InputError, match="no inputs"):
        check_specs([])
    with pytest.raises(InputError, match="once"):
        check_specs(["-", "-"])
    with pytest.raises(InputError, match="nope.txt"):
        check_specs(["@/definitely/nope.txt"])
