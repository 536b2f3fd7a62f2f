"""`secd init`: start a project (secd.yml, an example job, .gitignore) and check git signing.

secd runs only commits signed with a key registered to the pusher, so a project that cannot sign
cannot run; the check prints the exact git and gpg commands that fix what is missing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["FILES", "SigningReport", "check_signing", "init_project"]

SECD_YML = """\
# secd.yml: how secd runs this project. Every key is optional; delete what you do not need.

# Hours the job may run before it is stopped: a number greater than 0, like 3 or 0.5.
# The site sets a maximum. Default: 3.
runfor: 1

# GPUs for the job: false (none), true (one) or a number. Default: false.
gpu: false

# A folder in your own cache storage, kept from run to run, for @secd.cache and anything worth
# keeping (downloaded models...). Relative, like "models/bert". Without it the job has no cache
# and cached functions run every time.
cache_dir: example

# Where that folder appears inside the job: an absolute path that is not /job, /output, /tmp or
# a system folder. Default: /cache.
mount_path: /cache

# What to run, from the repository's root: a list, or a string split as a shell would.
# Default: python main.py
command: [python, main.py]

# Which of the site's databases the job connects to; leave it out for the site's default.
# database: postgres
"""

MAIN_PY = '''\
"""An example secd job: a slow step cached with @secd.cache, then results in the output folder.

Run it here with `python main.py`, twice: the second run skips the slow step. In a secd run the
database account is in DB_USER, DB_PASS, DB_HOST, DB_PORT and DB_NAME, the cache is the folder
secd.yml names, and whatever is written under secd.output_path() comes back on the results branch.
"""

import json
import time

import secd


@secd.cache
def load_rows(limit):
    """The expensive step; in a real project, a query against the database."""
    time.sleep(2)  # stands in for a slow query
    return [{"id": number, "value": number * number} for number in range(limit)]


def main():
    rows = load_rows(100)
    summary = {"rows": len(rows), "total": sum(row["value"] for row in rows)}
    target = secd.output_path() / "summary.json"
    target.write_text(json.dumps(summary, indent=2) + "\\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
'''

REQUIREMENTS_TXT = """\
# The packages the job needs, one per line, from your site's package index.
# secd gives @secd.cache and secd.output_path(); >=0.1 is this secd, not an older namesake.
secd>=0.1
"""

GITIGNORE = """\
# Local runs: the cache and the results folder (secd brings results back on a branch).
.secd-cache/
output/
__pycache__/
.venv/
"""

FILES: dict[str, str] = {
    "secd.yml": SECD_YML,
    "main.py": MAIN_PY,
    "requirements.txt": REQUIREMENTS_TXT,
    ".gitignore": GITIGNORE,
}


@dataclass
class SigningReport:
    """What is missing for signed commits, each problem with the commands that fix it."""

    key: str | None = None
    problems: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Whether commits made here will be signed with a usable key."""
        return not self.problems


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def _git_config(directory: Path, name: str, *, boolean: bool = False) -> str | None:
    argv = ["git", "config", "--get"] + (["--type=bool"] if boolean else []) + [name]
    done = _run(argv, directory)
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


@dataclass
class _SecretKey:
    fingerprint: str
    validity: str
    capabilities: str
    emails: list[str]


def _secret_keys(gpg: str, directory: Path, which: str | None) -> list[_SecretKey] | None:
    """The secret keys gpg has (matching `which`), or None when gpg knows no such key."""
    argv = [gpg, "--batch", "--with-colons", "--list-secret-keys"]
    done = _run([*argv, "--", which] if which else argv, directory)
    if done.returncode != 0:
        return None
    keys: list[_SecretKey] = []
    for line in done.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            keys.append(_SecretKey("", fields[1], fields[11] if len(fields) > 11 else "", []))
        elif fields[0] == "fpr" and keys and not keys[-1].fingerprint:
            keys[-1].fingerprint = fields[9]
        elif fields[0] == "uid" and keys and len(fields) > 9:
            uid = fields[9]
            if "<" in uid and uid.endswith(">"):
                keys[-1].emails.append(uid[uid.rindex("<") + 1 : -1].lower())
    return keys


def _usable(key: _SecretKey) -> bool:
    # Capital S: the key as a whole (primary or a subkey) can sign; r, e, d: revoked, expired...
    return "S" in key.capabilities and key.validity not in ("r", "e", "d", "i", "n")


def check_signing(directory: Path) -> SigningReport:
    """Check user.signingkey, that gpg holds that key and it can sign, and commit.gpgsign."""
    report = SigningReport()
    if shutil.which("git") is None:
        report.problems.append(("git is not installed", ["sudo apt-get install git"]))
        return report
    name = _git_config(directory, "user.name")
    email = _git_config(directory, "user.email")
    if not name or not email:
        report.problems.append(
            (
                "git does not know your name and e-mail (commits carry them; the forge matches "
                "the e-mail to your key)",
                [
                    shlex.join(["git", "config", "--global", "user.name", name or "Your Name"]),
                    shlex.join(
                        ["git", "config", "--global", "user.email", email or "you@example.org"]
                    ),
                ],
            )
        )
    gpg_format = _git_config(directory, "gpg.format")
    if gpg_format and gpg_format != "openpgp":
        report.problems.append(
            (
                f"gpg.format is {gpg_format}; secd verifies OpenPGP (gpg) signatures only",
                ["git config --global gpg.format openpgp"],
            )
        )
    gpg = (
        _git_config(directory, "gpg.openpgp.program")
        or _git_config(directory, "gpg.program")
        or "gpg"
    )
    if shutil.which(gpg) is None:
        report.problems.append((f"{gpg} is not installed", ["sudo apt-get install gnupg"]))
        return report
    uid = f"{name or 'Your Name'} <{email or 'you@example.org'}>"
    generate = shlex.join([gpg, "--quick-generate-key", uid, "ed25519", "sign", "2y"])
    listing = f"{gpg} --list-secret-keys --keyid-format=long"
    configured = _git_config(directory, "user.signingkey")
    if configured is None:
        usable = [key for key in _secret_keys(gpg, directory, None) or [] if _usable(key)]
        if usable:
            fix = [f"git config --global user.signingkey {usable[0].fingerprint}"]
            if len(usable) > 1:
                fix.insert(0, f"{listing}   # pick one of your {len(usable)} keys")
        else:
            fix = [generate, listing, "git config --global user.signingkey <its fingerprint>"]
        report.problems.append(("git has no signing key (user.signingkey is not set)", fix))
    else:
        # "<fingerprint>!" tells gpg to use exactly that subkey; gpg looks keys up without it.
        keys = _secret_keys(gpg, directory, configured.rstrip("!"))
        if not keys:
            report.problems.append(
                (
                    f"user.signingkey is {configured}, but gpg has no secret key for it",
                    [
                        f"{gpg} --import <your-secret-key.asc>   # a key made on another machine",
                        f"{generate}   # or make a new one",
                        listing,
                        "git config --global user.signingkey <its fingerprint>",
                    ],
                )
            )
        elif not _usable(keys[0]):
            report.problems.append(
                (
                    f"the key {configured} cannot sign (expired, revoked or without a signing "
                    "capability)",
                    [f"{gpg} --quick-set-expire {keys[0].fingerprint} 2y", generate],
                )
            )
        else:
            report.key = keys[0].fingerprint
            if email and email.lower() not in keys[0].emails:
                report.problems.append(
                    (
                        f"the key {configured} has no user id with your git e-mail {email}; "
                        "the forge will not mark your commits verified",
                        [shlex.join([gpg, "--quick-add-uid", keys[0].fingerprint, uid])],
                    )
                )
    if _git_config(directory, "commit.gpgsign", boolean=True) != "true":
        report.problems.append(
            (
                "commit.gpgsign is not true, so git does not sign commits unless told to",
                ["git config --global commit.gpgsign true"],
            )
        )
    return report


def init_project(directory: Path, *, out: TextIO | None = None) -> int:
    """Write the starter files that do not exist yet, then check git signing; the exit code."""
    out = out or sys.stdout
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    kept: list[str] = []
    for name, text in FILES.items():
        try:
            # "x": never overwrite, even a file that appeared since we looked.
            with open(directory / name, "x", encoding="utf-8") as file:
                file.write(text)
            written.append(name)
        except FileExistsError:
            kept.append(name)
    where = os.path.relpath(directory) if directory.is_absolute() else str(directory)
    if written:
        print(f"secd init: wrote {', '.join(written)} in {where}", file=out)
    if kept:
        print(
            f"secd init: not overwriting {', '.join(kept)} (already there; move them away to "
            "get the examples)",
            file=out,
        )
        if ".gitignore" in kept:
            print("  add these lines to your .gitignore: .secd-cache/ output/", file=out)
    report = check_signing(directory)
    if report.ready:
        print(f"git signing: ready (key {report.key})", file=out)
    else:
        count = len(report.problems)
        print(
            f"git signing: {count} thing{'s' if count > 1 else ''} to fix "
            "(secd runs only signed commits):",
            file=out,
        )
        for problem, commands in report.problems:
            print(f"  - {problem}", file=out)
            for command in commands:
                print(f"      {command}", file=out)
    key = report.key or "<your key>"
    in_repository = _run(["git", "rev-parse", "--is-inside-work-tree"], directory).returncode == 0
    start = "" if in_repository else "git init && "
    print(
        "Then register your public key with the forge (GitLab: Preferences > GPG Keys):\n"
        f"      gpg --armor --export {key}\n"
        f"and push: {start}git add . && git commit -m 'First run' && git push",
        file=out,
    )
    return 0 if written else 1
