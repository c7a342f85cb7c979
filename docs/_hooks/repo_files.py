"""MkDocs hook: repository files that the pages link to by their real relative paths.

A page under docs/ links to `../benchmarks/README.md` or `../reports/fidelity.md`: the path that
works on GitHub and in an editor. MkDocs only knows the files under docs/, so this hook adds every
repository file outside docs/ that a page links to (and, for a linked Markdown file, the files it
links to) to the site under `repo/<path>`, and points the links there. A link to a file that does
not exist is left as it is, so `mkdocs build --strict` still fails on it.

    docs/cluster.md:  [benchmarks](../benchmarks/README.md)  ->  site page repo/benchmarks/
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

PREFIX = "repo"  # where the repository's own files go in the site
LINK = re.compile(r"(\]\(\s*<?)([^)\s>#]+)")  # the target of an inline link or image: ](path or ](<path

_added: dict[Path, str] = {}  # absolute path of a repository file -> its src_uri in the site


def _targets(md: Path) -> list[Path]:
    """The local files a Markdown file links to, resolved against its folder."""
    out = []
    for m in LINK.finditer(md.read_text(encoding="utf-8")):
        target = m.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            continue
        out.append((md.parent / target).resolve())
    return out


def on_files(files, config):
    docs = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    _added.clear()
    todo = [Path(f.abs_src_path) for f in files.documentation_pages()]
    while todo:
        for target in _targets(todo.pop()):
            if (
                target in _added
                or not target.is_file()
                or not target.is_relative_to(root)
                or target.is_relative_to(docs)
            ):
                continue
            _added[target] = f"{PREFIX}/{target.relative_to(root).as_posix()}"
            files.append(File.generated(config, _added[target], abs_src_path=str(target)))
            if target.suffix == ".md":
                todo.append(target)
    return files


def on_page_markdown(markdown, page, config, files):
    here = Path(page.file.abs_src_path).parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def point(m: re.Match) -> str:
        target = m.group(2)
        uri = None if "://" in target or target.startswith("/") else _added.get((here / target).resolve())
        return m.group(1) + (posixpath.relpath(uri, page_dir or ".") if uri else target)

    return LINK.sub(point, markdown)
