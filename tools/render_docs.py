"""Render the notebooks in nbs/ to static HTML pages in a folder, offline (no quarto needed).

`make docs` uses nbdev-docs where quarto is installed and this script otherwise. The notebooks keep
their outputs, so the pages show the real results; cells marked `#| hide` are left out and nbdev's
`#|` directive lines are removed, as nbdev-docs would do.
"""
import argparse, html, re
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

DIRECTIVE = re.compile(r"^\s*#\s*\|.*$\n?", re.M)

def clean(nb):
    "Drop hidden cells and directive lines."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code" and re.search(r"^\s*#\s*\|\s*hide\s*$", cell.source, re.M): continue
        if cell.cell_type == "raw": continue
        if cell.cell_type == "code": cell.source = DIRECTIVE.sub("", cell.source)
        cells.append(cell)
    nb.cells = cells
    return nb

def title_of(nb, fallback):
    for cell in nb.cells:
        m = re.search(r"^# (.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m: return m.group(1).strip()
    return fallback

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nbs", type=Path, default=Path("nbs"))
    ap.add_argument("--out", type=Path, default=Path("_docs"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    exporter.mathjax_url = ""  # nothing fetched from a CDN: pages work offline
    exporter.require_js_url = ""
    links = []
    for path in sorted(args.nbs.glob("[0-9]*.ipynb")) + sorted(args.nbs.glob("run_*.ipynb")):
        nb = clean(nbformat.read(path, as_version=4))
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title_of(nb, path.stem)}})
        body = re.sub(r'<script src=""\s*>\s*</script>', "", body)  # the emptied CDN loaders
        (args.out/f"{path.stem}.html").write_text(body)
        links.append((path.stem, title_of(nb, path.stem)))
    items = "\n".join(f'<li><a href="{stem}.html">{html.escape(title)}</a> <small>({stem})</small></li>' for stem, title in links)
    (args.out/"index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>deepfake-mlops</title></head>"
                                       f"<body><h1>deepfake-mlops</h1><p>The notebooks, in data-flow order.</p><ul>{items}</ul></body></html>")
    print(f"{len(links)} pages in {args.out}/index.html")

if __name__ == "__main__":
    main()
