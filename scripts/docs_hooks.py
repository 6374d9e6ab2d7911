"""MkDocs hooks (mkdocs.yml: ``hooks``): the pages the documentation build generates rather than keeps.

- ``results/<folder>.md``: one page per results folder under ``docs/`` (any folder with a
  ``summary.md``), made by ``experiments.report.docs_page`` from the folder's ``summary.md``,
  ``results.csv``, plots and ``notes.md``; listed under "Results" in the navigation, in path order;
- ``tutorial/notebook.md``: ``examples/tutorial.py`` (a jupytext percent script) as a page, its markdown
  cells as text and its code cells as code, each figure it draws shown as drawn on ``tinyworld``
  (``docs/tutorial-<name>.png``).

Nothing here edits a file in the repository; the pages exist only in the built site.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout's packages, not another installed copy
    sys.path.insert(0, str(ROOT))

RESULTS_NAV = "Results"
TUTORIAL = ROOT / "examples" / "tutorial.py"
TUTORIAL_PAGE = "tutorial/notebook.md"


def results_folders(docs_dir: Path) -> list[Path]:
    """Every results folder under ``docs_dir``: a folder with a summary.md, in path order."""
    return sorted(p.parent for p in docs_dir.rglob("summary.md"))


def results_page(folder: Path, docs_dir: Path) -> str:
    """Where ``folder``'s page goes: ``results/<its path under docs/, with - for />.md``."""
    return "results/" + folder.relative_to(docs_dir).as_posix().replace("/", "-") + ".md"


def _title(folder: Path) -> str:
    first = (folder / "summary.md").read_text().splitlines()[0].lstrip("# ").strip()
    return first.split(": ", 1)[-1] + f" ({first.split(': ', 1)[0]})" if ": " in first else first


def on_config(config):
    docs_dir = Path(config["docs_dir"])
    pages = [{_title(f): results_page(f, docs_dir)} for f in results_folders(docs_dir)]
    for item in config["nav"] or []:
        if isinstance(item, dict) and RESULTS_NAV in item:
            item[RESULTS_NAV] = list(item[RESULTS_NAV]) + pages
            break
    else:
        raise ValueError(f"mkdocs.yml's nav has no {RESULTS_NAV!r} section for the results pages")
    return config


def on_files(files, config):
    from experiments.report import docs_page

    docs_dir = Path(config["docs_dir"])
    for folder in results_folders(docs_dir):
        uri = results_page(folder, docs_dir)
        text = docs_page(folder.relative_to(ROOT), (docs_dir / uri).parent.relative_to(ROOT))
        files.append(File.generated(config, uri, content=text))
    files.append(File.generated(config, TUTORIAL_PAGE, content=tutorial_page(TUTORIAL, docs_dir)))
    return files


_CELL = re.compile(r"^# %%(?P<kind> \[markdown\])?.*$", re.MULTILINE)
_FIGURE = re.compile(r'"([\w-]+)\.png"')


def tutorial_page(script: Path, docs_dir: Path) -> str:
    """A jupytext percent script as markdown: markdown cells as text, code cells as python blocks."""
    text = script.read_text()
    marks = list(_CELL.finditer(text))
    parts = [
        "!!! note\n    This page is `examples/tutorial.py` as the documentation build renders it (not run: "
        "the figures are those it drew on `tinyworld`, see [the tutorial's overview](../tutorial.md)). "
        "Run it with `python examples/tutorial.py`, or `jupytext --to ipynb examples/tutorial.py` for a "
        "notebook."
    ]
    for mark, following in zip(marks, marks[1:] + [None], strict=True):
        body = text[mark.end() : following.start() if following else len(text)].strip("\n")
        if mark["kind"]:  # a markdown cell: every line commented out
            parts.append("\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines()))
        elif body.strip():
            parts.append(f"```python\n{body}\n```")
            for name in dict.fromkeys(_FIGURE.findall(body)):
                if (docs_dir / f"tutorial-{name}.png").is_file():
                    parts.append(f"![{name}, as drawn on tinyworld](../tutorial-{name}.png)")
    return "\n\n".join(parts) + "\n"
