"""CI: the GitHub Actions workflow ``forkops ci workflow`` prints, and the issues
``forkops nightly --open-issue`` files through the ``gh`` CLI.

The workflow is package data (``forkops/data/ci/nightly.yml``, so an installed forkops has it)
with a few ``@@NAME@@`` slots filled from the workspace: the repository matrix comes from
forkops.toml, paths are relative to the git checkout that holds the workspace.

Issues: one per (repository, tag) that newly became incompatible, titled
``forkops nightly: <repo> <tag> needs a person``. An open issue with exactly that title is
updated with a comment instead of a second issue being filed; what exists is read with one
``gh issue list`` call. Bodies go to ``gh`` on stdin (``--body-file -``), never on the command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from forkops.errors import BadInput, ExternalError
from forkops.workspace import Workspace

TEMPLATE = ("data", "ci", "nightly.yml")
TITLE_PREFIX = "forkops nightly: "


def _template() -> str:
    return resources.files("forkops").joinpath(*TEMPLATE).read_text(encoding="utf-8")


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _checkout_root(ws: Workspace) -> Path:
    """The top of the git checkout holding the workspace (the workflow's checkout), or the
    workspace itself when it is not in one."""
    for folder in (ws.root, *ws.root.parents):
        if (folder / ".git").exists():
            return folder
    return ws.root


def workflow(ws: Workspace, *, install: str) -> str:
    """The nightly workflow for ``ws``: one matrix entry per repository of forkops.toml."""
    # ${{ }} in a run: line is expanded by GitHub before the shell sees it: never pass one through
    if not install.strip() or "\n" in install or "@@" in install or "${{" in install:
        raise BadInput(f"--install {install!r}: expected a pip requirement (e.g. forkops==1.2.0)")
    top = _checkout_root(ws)
    prefix = ws.root.relative_to(top).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    entries = []
    for rc in ws.repos:
        try:
            clone = rc.path.relative_to(top).as_posix()
        except ValueError:
            raise BadInput(f"{rc.name}: its clone {rc.path} is outside {top}; the workflow caches clones "
                           "inside the checkout (use a path inside the workspace in forkops.toml)") from None
        entries.append(f"          - repo: {_yaml_str(rc.name)}\n            path: {_yaml_str(clone)}")
    text = (_template().replace("@@MATRIX@@", "\n".join(entries))
            .replace("@@INSTALL@@", _shell_word(install))
            .replace("@@WORKDIR@@", _yaml_str(prefix.rstrip("/") or "."))
            .replace("@@DIR@@", prefix))
    assert "@@" not in text, "a template slot was left unfilled"
    return text


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ---------------------------------------------------------------------------------------
# Issues through gh
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssueRequest:
    """One issue nightly wants open: ``title`` identifies it; ``body`` is its text."""

    title: str
    body: str


@dataclass(frozen=True)
class IssueAction:
    title: str
    action: Literal["created", "commented"]
    number: int | None  # the existing issue commented on
    url: str  # what gh printed

    def as_json(self) -> dict[str, object]:
        return {"title": self.title, "action": self.action, "number": self.number, "url": self.url}


Runner = Callable[[Sequence[str], str | None], str]


def run_gh(args: Sequence[str], stdin: str | None) -> str:
    """Run ``gh ARGS`` (stdin given), return stdout; ExternalError (exit 3) when it fails."""
    exe = shutil.which("gh")
    if exe is None:
        raise ExternalError("gh (the GitHub CLI) is not on PATH; --open-issue needs it "
                            "(https://cli.github.com; in GitHub Actions it is preinstalled)")
    try:
        proc = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ExternalError(f"cannot run gh: {exc}") from None
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no error output"
        raise ExternalError(f"gh {' '.join(args[:2])} failed ({proc.returncode}): {last}")
    return proc.stdout


LIST_ARGS = ("issue", "list", "--state", "open", "--search", f'"{TITLE_PREFIX.strip()}" in:title',
             "--json", "number,title", "--limit", "500")


def file_issues(requests: Sequence[IssueRequest], *, run: Runner = run_gh) -> list[IssueAction]:
    """Create an issue per request, or comment on the open issue with the same title."""
    if not requests:
        return []
    try:
        listed = json.loads(run(LIST_ARGS, None) or "[]")
        existing = {str(item["title"]): int(item["number"]) for item in listed}
    except (ValueError, KeyError, TypeError) as exc:
        raise ExternalError(f"gh issue list: unexpected output ({exc})") from None
    actions = []
    for req in requests:
        number = existing.get(req.title)
        if number is None:
            out = run(("issue", "create", "--title", req.title, "--body-file", "-"), req.body)
            actions.append(IssueAction(req.title, "created", None, out.strip()))
        else:
            out = run(("issue", "comment", str(number), "--body-file", "-"), req.body)
            actions.append(IssueAction(req.title, "commented", number, out.strip()))
    return actions
