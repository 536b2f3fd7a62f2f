"""commits_to_verify and read_commit, on real repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import secd_shared.git as door
from secd_verifier.commits import ZERO, GitError, commits_to_verify, read_commit

from .conftest import Repo


def test_a_push_to_a_branch_lists_before_to_after_oldest_first(repo: Repo):
    c1, c2, c3, c4 = (repo.commit() for _ in range(4))
    assert commits_to_verify(repo.path, c2, c4, {c1, c2}) == [c3, c4]


def test_commits_in_before_after_are_listed_even_if_verified(repo: Repo):
    c1, c2, c3 = (repo.commit() for _ in range(3))
    assert commits_to_verify(repo.path, c1, c3, {c1, c2, c3}) == [c2, c3]


def test_a_new_branch_lists_everything_reachable(repo: Repo):
    c1, c2, c3 = (repo.commit() for _ in range(3))
    assert commits_to_verify(repo.path, ZERO, c3, {c1, c2}) == [c1, c2, c3]


def test_a_new_branch_lists_what_no_other_branch_reaches(repo: Repo):
    # bob's verified work on main is not part of alice's push of a new branch on top of it...
    c1, c2 = repo.commit(), repo.commit()
    repo.git("switch", "-q", "-c", "feature")
    c3 = repo.commit()
    assert commits_to_verify(repo.path, ZERO, c3, {c1, c2}, ref="refs/heads/feature") == [c3]
    # ...but commits never verified stay listed, whichever branch holds them.
    assert commits_to_verify(repo.path, ZERO, c3, {c1}, ref="refs/heads/feature") == [c2, c3]


def test_deleting_a_branch_verifies_nothing(repo: Repo):
    repo.commit()
    assert commits_to_verify(repo.path, repo.head(), ZERO, []) == []


def test_verified_history_outside_the_push_is_skipped(repo: Repo):
    c1, c2 = repo.commit(), repo.commit()
    repo.git("switch", "-q", "-c", "feature")
    c3, c4 = repo.commit(), repo.commit()
    assert commits_to_verify(repo.path, c3, c4, {c1, c2, c3}) == [c4]


def test_unverified_history_below_before_is_listed(repo: Repo):
    # main is verified; branch x got an unsigned commit u (that push was rejected, but the forge
    # kept the ref), then a commit on top of it: before == u, so u is not in before..after.
    base = repo.commit()
    repo.git("switch", "-q", "-c", "x")
    u = repo.commit("unsigned")
    s1 = repo.commit("signed on top")
    assert commits_to_verify(repo.path, u, s1, {base}) == [u, s1]


def test_a_rejected_commit_under_a_new_branch_is_listed(repo: Repo):
    base = repo.commit()
    repo.git("switch", "-q", "-c", "x")
    u = repo.commit("unsigned, pushed on x and rejected")
    repo.git("switch", "-q", "-c", "y")
    s1 = repo.commit("signed, on a new branch y")
    assert u in commits_to_verify(repo.path, ZERO, s1, {base})
    # and pushing main on top of y, from main's verified head, lists it too
    repo.git("switch", "-q", "main")
    repo.git("merge", "-q", "--ff-only", "y")
    assert commits_to_verify(repo.path, base, s1, {base}) == [u, s1]


def test_merges_are_ordered_parents_first(repo: Repo):
    base = repo.commit()
    repo.git("switch", "-q", "-c", "side")
    side = [repo.commit() for _ in range(3)]
    repo.git("switch", "-q", "main")
    main = [repo.commit() for _ in range(2)]
    repo.git("merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "merge", "side")
    merge = repo.head()
    top = repo.commit()
    listed = commits_to_verify(repo.path, main[-1], top, {base})
    assert set(listed) == {*side, *main, merge, top}
    position = {sha: i for i, sha in enumerate(listed)}
    for sha in listed:
        parents = repo.git("rev-list", "--parents", "-n1", sha).split()[1:]
        assert all(position[p] < position[sha] for p in parents if p in position)


def test_a_large_verified_set_goes_through_stdin(repo: Repo, monkeypatch):
    c1, c2, c3 = (repo.commit() for _ in range(3))
    # 60,000 ids are 2.5 MB: more than fits on a command line, and absent from the repository.
    fake = [f"{i:040x}" for i in range(1, 60_001)]
    argv_sizes = []
    real_run = subprocess.run

    def spy(args, *rest, **kwargs):
        argv_sizes.append(sum(len(a) for a in args))
        return real_run(args, *rest, **kwargs)

    monkeypatch.setattr(door.subprocess, "run", spy)
    assert commits_to_verify(repo.path, c2, c3, [*fake, c1, c2]) == [c3]
    assert max(argv_sizes) < 1000


@pytest.mark.parametrize("bad", ["1234567", "z" * 40, "", "--all", "HEAD", "a" * 41])
def test_a_malformed_sha_is_a_value_error(repo: Repo, bad: str):
    head = repo.commit()
    with pytest.raises(ValueError, match="not a 40-hex commit id"):
        commits_to_verify(repo.path, ZERO, bad, [])
    with pytest.raises(ValueError, match="not a 40-hex commit id"):
        commits_to_verify(repo.path, bad, head, [])
    with pytest.raises(ValueError, match="not a 40-hex commit id"):
        commits_to_verify(repo.path, ZERO, head, [bad])


def test_a_sha_not_in_the_repository_is_a_value_error(repo: Repo):
    head = repo.commit()
    missing = "1234567" + "0" * 33
    with pytest.raises(ValueError, match=r"push names commit 1234567, which is not in repository"):
        commits_to_verify(repo.path, ZERO, missing, [])
    with pytest.raises(ValueError, match=r"push names commit 1234567, which is not in repository"):
        commits_to_verify(repo.path, missing, head, [])
    tree = repo.git("rev-parse", "HEAD^{tree}")
    with pytest.raises(ValueError, match=r"which is a tree .*, not a commit"):
        commits_to_verify(repo.path, ZERO, tree, [])


def test_a_missing_repository_is_a_git_error(tmp_path: Path):
    with pytest.raises(GitError, match="is not a git repository"):
        commits_to_verify(tmp_path / "nowhere", ZERO, "a" * 40, [])


def test_read_commit_of_an_unsigned_commit(repo: Repo):
    sha = repo.commit("hello")
    payload, signature = read_commit(repo.path, sha)
    assert signature is None
    assert payload == repo.git("cat-file", "commit", sha).encode() + b"\n"


def test_read_commit_splits_signature_headers_from_the_payload(repo: Repo):
    tree = repo.git("rev-parse", f"{repo.commit()}^{{tree}}")
    raw = (
        f"tree {tree}\n"
        "author A <a@example.org> 1700000000 +0000\n"
        "committer A <a@example.org> 1700000000 +0000\n"
        "gpgsig -----BEGIN PGP SIGNATURE-----\n"
        " \n"
        "  indented\n"
        " -----END PGP SIGNATURE-----\n"
        "gpgsig-sha256 -----BEGIN PGP SIGNATURE-----\n"
        " other\n"
        " -----END PGP SIGNATURE-----\n"
        "\n"
        "message\n"
        "gpgsig in the message stays\n"
    ).encode()
    sha = repo.git("hash-object", "-t", "commit", "-w", "--stdin", stdin=raw)
    payload, signature = read_commit(repo.path, sha)
    assert signature == "-----BEGIN PGP SIGNATURE-----\n\n indented\n-----END PGP SIGNATURE-----\n"
    assert (
        payload
        == (
            f"tree {tree}\n"
            "author A <a@example.org> 1700000000 +0000\n"
            "committer A <a@example.org> 1700000000 +0000\n"
            "\n"
            "message\n"
            "gpgsig in the message stays\n"
        ).encode()
    )
