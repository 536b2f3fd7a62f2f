"""secd's ref-name rules against the real `git check-ref-format`, over good and hostile names."""

from __future__ import annotations

import random
import subprocess

import pytest

from secd_shared.refname import ref_format_problem

CORPUS = [
    # good
    "refs/heads/main", "refs/heads/feature/x", "refs/tags/v1.0", "refs/heads/a-b_c.d",
    "refs/heads/feature+x", "refs/heads/a,b#c!d", "refs/heads/@", "refs/heads/a@b",
    "refs/heads/a{b}", "refs/heads/ü", "refs/heads/x.y",
    "refs/heads/a.lockx", "refs/heads/lock", "refs/heads/x.loc", "a/b", "refs/heads/'quote'",
    "refs/heads/a;b", "refs/heads/$(x)", "refs/heads/`x`", "refs/heads/a|b&c",
    # hostile or malformed
    "refs/heads//secd/x", "refs/heads/./secd/x", "refs/heads/../secd/x", "refs/heads/secd/..",
    "refs/heads/a..b", "refs/heads/a.lock", "refs/heads/a.lock/b", "refs/heads/.hidden",
    "refs/heads/a/", "/refs/heads/a", "refs/heads/a.", "refs/heads/a@{1}", "refs/heads/@{",
    "@", "main", "refs/heads/a b", "refs/heads/a\tb", "refs/heads/a\nb", "refs/heads/a\x7fb",
    "refs/heads/a\x01", "refs/heads/a~1", "refs/heads/a^", "refs/heads/a:b", "refs/heads/a?",
    "refs/heads/a*", "refs/heads/a[b", "refs/heads/a\\b", "refs/heads/main\n", "refs//heads",
    "refs/heads/.", "refs/heads/..", ".refs/heads/a", "refs/heads/a/.b", "refs/heads/x/.lock",
    "refs/heads/.lock", "", "/", "refs/heads/a..", "refs/heads/a@{", "refs/heads/@@{x}",
]  # fmt: skip


def git_takes(ref: str) -> bool:
    """What the real git says."""
    done = subprocess.run(["git", "check-ref-format", ref], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.parametrize("ref", CORPUS)
def test_the_corpus_is_judged_as_git_judges_it(ref):
    assert (ref_format_problem(ref) is None) == git_takes(ref), ref_format_problem(ref)


def test_random_names_from_a_hostile_alphabet_are_judged_as_git_judges_them():
    hostile = [*"./@{}*?[\\^~: ", ".lock", "..", "//", "\t", "\x7f", "\x1b", "refs/"]
    pieces = [*hostile, *["a", "b", "x-", "_", "é", "/c", ".d"] * 4]
    rng = random.Random(14)
    names = {
        ("refs/heads/" if rng.random() < 0.6 else "")
        + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        for _ in range(600)
    }
    wrong = [n for n in names if (ref_format_problem(n) is None) != git_takes(n)]
    assert not wrong, wrong[:10]
    # The alphabet reaches both verdicts, many times each.
    taken = sum(ref_format_problem(n) is None for n in names)
    assert 50 < taken < len(names) - 50


def test_what_git_cannot_be_given_is_refused():
    # NUL cannot reach git as an argument; a lone surrogate is not UTF-8.
    assert "0x00" in ref_format_problem("refs/heads/a\0b")
    assert "UTF-8" in ref_format_problem("refs/heads/\ud800")


def test_the_reason_names_the_rule():
    assert ref_format_problem("refs/heads//secd/x") == (
        "it has an empty component ('//', or a '/' at the start or end)"
    )
    assert ref_format_problem("refs/heads/./secd/x") == "a component starts with '.'"
    assert ref_format_problem("refs/heads/a b") == "it contains a space"
