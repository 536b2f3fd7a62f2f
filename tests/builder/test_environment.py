"""Environments with real uv: built once per requirements hash, reused, locked, cleaned up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from secd_builder.environment import (
    COMPLETE_MARKER,
    HEADER_PREFIX,
    BuildError,
    check_requirements,
    ensure_environment,
    requirements_key,
)

PY = "cpython-3.11.7-x86_64"


def headers(log_path: Path) -> int:
    return sum(line.startswith(HEADER_PREFIX) for line in log_path.read_text().splitlines())


def test_key_ignores_comments_blank_lines_whitespace_and_order():
    a = requirements_key(b"six==1.17.0\nnumpy>=1.26  # fast arrays\n\n", PY)
    b = requirements_key(b"# deps\n  numpy>=1.26\nsix==1.17.0\n", PY)
    assert a == b
    assert len(a) >= 16 and int(a, 16) >= 0


def test_key_changes_with_requirements_and_python():
    base = requirements_key(b"six\n", PY)
    assert requirements_key(b"six==1.16\n", PY) != base
    assert requirements_key(b"six\n", "cpython-3.12.1-x86_64") != base
    assert requirements_key(b"", PY) == requirements_key(b"# nothing\n\n", PY)


def test_empty_requirements_build_then_reuse(tmp_path):
    envs = tmp_path / "envs"
    first = ensure_environment(b"", envs)
    assert not first.reused
    assert first.path == envs.absolute() / first.key
    assert (first.path / COMPLETE_MARKER).is_file()
    assert first.log_path == envs.absolute() / f"{first.key}.log"
    out = subprocess.run(
        [first.path / "bin" / "python", "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(first.path)

    second = ensure_environment(b"# still nothing\n", envs)
    assert second.reused
    assert second.key == first.key and second.path == first.path
    # Reuse builds nothing: one build header in the log (times are printed, not asserted).
    assert headers(first.log_path) == 1
    print(f"empty build {first.seconds:.3f}s, reuse {second.seconds:.4f}s")


def test_six_installs_and_imports(tmp_path):
    env = ensure_environment(b"six\n", tmp_path / "envs")
    assert not env.reused
    subprocess.run([env.path / "bin" / "python", "-c", "import six"], check=True)
    again = ensure_environment(b"six  # compat\n", tmp_path / "envs")
    assert again.reused and again.path == env.path
    print(f"six build {env.seconds:.3f}s, reuse {again.seconds:.4f}s")


def test_threads_racing_on_one_key_build_once(tmp_path):
    envs = tmp_path / "envs"
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: ensure_environment(b"six\n", envs), range(6)))
    assert len({r.path for r in results}) == 1
    assert sum(not r.reused for r in results) == 1
    assert headers(results[0].log_path) == 1


def test_processes_racing_on_one_key_build_once(tmp_path):
    envs = tmp_path / "envs"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from secd_builder.environment import ensure_environment
        env = ensure_environment(b"six\\n", Path({str(envs)!r}))
        print("reused" if env.reused else "built")
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outcomes == ["built", "reused", "reused", "reused"]
    (log,) = envs.glob("*.log")
    assert headers(log) == 1


def test_half_built_env_is_removed_and_rebuilt(tmp_path):
    envs = tmp_path / "envs"
    env = ensure_environment(b"", envs)
    (env.path / COMPLETE_MARKER).unlink()
    (env.path / "leftover").write_text("from a crashed build")
    rebuilt = ensure_environment(b"", envs)
    assert not rebuilt.reused
    assert not (rebuilt.path / "leftover").exists()
    assert (rebuilt.path / COMPLETE_MARKER).is_file()
    assert headers(rebuilt.log_path) == 2


def test_failed_install_raises_with_log_tail_and_leaves_no_env(tmp_path):
    envs = tmp_path / "envs"
    requirements = b"secd-no-such-package-xyz==1.0\n"
    with pytest.raises(BuildError) as info:
        ensure_environment(requirements, envs)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith("installing requirements.txt failed: ")
    assert "secd-no-such-package-xyz" in message
    assert "secd-no-such-package-xyz" in error.log_tail
    assert HEADER_PREFIX in error.log_tail
    key = next(envs.glob("*.log")).stem
    assert not (envs / key).exists()
    assert "secd-no-such-package-xyz" in (envs / f"{key}.log").read_text()

    with pytest.raises(BuildError):
        ensure_environment(requirements, envs)
    assert headers(envs / f"{key}.log") == 2  # each attempt appends its own header
    assert not (envs / key).exists()


def test_timeout_raises_and_cleans_up(tmp_path):
    envs = tmp_path / "envs"
    with pytest.raises(BuildError, match=r"took longer than 0\.001 s"):
        ensure_environment(b"six\n", envs, timeout_s=0.001)
    assert [p.name for p in envs.iterdir() if not p.name.endswith((".log", ".lock"))] in (
        [],
        [".uv-cache"],
    )


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("-e .", "'-e' is not allowed"),
        ("-e git+https://example.org/x.git#egg=x", "'-e' is not allowed"),
        ("--index-url https://evil.example/simple", "'--index-url' is not allowed"),
        ("-i https://evil.example/simple", "'--index-url' is not allowed"),
        ("--extra-index-url=https://evil.example/simple", "'--extra-index-url' is not allowed"),
        ("-f /tmp/wheels", "'--find-links' is not allowed"),
        ("--find-links https://evil.example/", "'--find-links' is not allowed"),
        ("--trusted-host evil.example", "'--trusted-host' is not allowed"),
        ("-r other.txt", "'-r' is not allowed"),
        ("-rother.txt", "'-r' is not allowed"),
        ("-c constraints.txt", "'-c' is not allowed"),
        ("--pre", "'--pre' is not allowed"),
        ("./local/pkg", "local paths are not allowed"),
        ("/abs/pkg-1.0.whl", "local paths are not allowed"),
        ("pkg-1.0-py3-none-any.whl", "local paths are not allowed"),
        ("pkg @ file:///tmp/pkg", "local paths are not allowed"),
        ("file:../pkg", "local paths are not allowed"),
        ("git+https://github.com/x/y.git", "VCS URLs"),
        ("y @ git+https://github.com/x/y.git", "VCS URLs"),
        ("pkg @ https://evil.example/pkg.whl", "direct URLs are not allowed"),
        ("https://evil.example/pkg.tar.gz", "direct URLs are not allowed"),
        ("${TOKEN}", "environment variables"),
        ("six --global-option=build_ext", "'--global-option' is not allowed after"),
        ("not a requirement!", "is not a package requirement"),
    ],
)
def test_disallowed_lines_refused(tmp_path, line, says):
    requirements = f"six\n# a comment\n{line}\n".encode()
    with pytest.raises(BuildError) as info:
        ensure_environment(requirements, tmp_path / "envs")
    message = str(info.value)
    assert message.startswith("requirements.txt line 3: ")
    assert says in message
    assert "\n" not in message
    assert not (tmp_path / "envs").exists()  # refused before anything is built


def test_index_url_message_is_exact():
    with pytest.raises(BuildError) as info:
        check_requirements(b"six\nnumpy\n--index-url https://evil.example/simple\n")
    assert str(info.value) == (
        "requirements.txt line 3: '--index-url' is not allowed; "
        "list packages from the site's index only"
    )


def test_plain_specifiers_accepted():
    text = (
        b"\xef\xbb\xbfnumpy==1.26.4\n"
        b"pandas >= 2, < 3\n"
        b"requests[socks,security]~=2.31\n"
        b"torch ; sys_platform == 'linux'  # cpu build\n"
        b"Django(>=4.2)\n"
        b"six==1.17.0 \\\n"
        b"    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274\n"
        b"zope.interface\n"
    )
    lines = check_requirements(text)
    assert lines[0] == "numpy==1.26.4"
    assert lines[3] == "torch ; sys_platform == 'linux'"
    assert lines[5].startswith("six==1.17.0 --hash=sha256:")
    assert len(lines) == 7


def test_continuation_cannot_smuggle_an_option():
    with pytest.raises(BuildError, match="line 2: '--index-url' is not allowed"):
        check_requirements(b"six\n--index-\\\nurl https://evil.example/simple\n")


def test_not_utf8_refused():
    with pytest.raises(BuildError, match="not UTF-8"):
        check_requirements(b"six\n\xff\xfe\n")
