"""Render the notebooks as a documentation site, and run reports in the same look, with no network access.

`make docs` uses nbdev-docs where quarto is installed and this script otherwise (quarto cannot be had
offline). Each notebook goes through nbdev's own processors, as nbdev-docs would put it through them:
directives, hidden and exported cells removed, a `show_doc` after every exported name; then nbconvert
renders it into a page of this site: navigation in data-flow order, the module's summary at the top,
signatures with tables of the documented parameters, code without prompts, the stored outputs.
Everything a page needs is inside it (styles, images as data URIs): no CDN, no fonts, no scripts.

    python tools/render_docs.py site [--nbs nbs] [--out _docs] [--report runs/report/run_pipeline.html]
    python tools/render_docs.py report runs/report/run_pipeline.ipynb [--docs _docs]
"""
from __future__ import annotations
import argparse, contextlib, html, inspect, os, re, sys, warnings
from functools import partial
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from pygments.formatters import HtmlFormatter

PROJECT = "deepfake-mlops"
TAGLINE = "Deepfake video detection, from research notebook to production model."
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")

# -- nbdev's processing -----------------------------------------------------------------------------------------

def _annotation(a) -> str: return a if isinstance(a, str) else inspect.formatannotation(a)

def _param(p:inspect.Parameter) -> str:
    "A parameter as written in the source: annotations stay as the module spells them (`str | Path`)."
    star = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
    s = star + p.name + ("" if p.annotation is p.empty else f":{_annotation(p.annotation)}")
    return s if p.default is p.empty else s + f"={p.default!r}"

def _signature(name, sig, width=96) -> str:
    "`name(params) -> ret`, one parameter per line when it does not fit on one."
    params = [_param(p) for p in sig.parameters.values()]
    kinds = [p.kind for p in sig.parameters.values()]
    if inspect.Parameter.KEYWORD_ONLY in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds:
        params.insert(kinds.index(inspect.Parameter.KEYWORD_ONLY), "*")
    ret = "" if sig.return_annotation is inspect.Signature.empty else f" -> {_annotation(sig.return_annotation)}"
    line = f"{name}({', '.join(params)}){ret}"
    return line if len(line) <= width else f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"

def _renderer():
    "A `show_doc` renderer: heading, signature, docstring, then the table of documented parameters (fastcore's docments)."
    from fastcore.docments import DocmentTbl, MarkdownRenderer
    class SignatureTable(MarkdownRenderer):
        def __init__(self, sym, name=None, title_level=3, maxline=110):
            try: super().__init__(sym, name, title_level, maxline)
            except NameError:  # an annotation names what the module imports lazily: the source's spelling will do
                self.sym, self.title_level, self.nm = sym, title_level, name or sym.__qualname__
                self.docs, self.fn = inspect.getdoc(sym) or "", f"{sym.__module__}.{sym.__qualname__}"
            with contextlib.suppress(ValueError, TypeError): self.sig = inspect.signature(self.sym)  # unevaluated annotations
        def _repr_markdown_(self):
            kind = "class" if inspect.isclass(self.sym) else ""
            if self.sig is not None: sig = _signature(self.nm, self.sig)
            elif kind: sig = f"{self.nm}({', '.join(b.__name__ for b in self.sym.__bases__)})"  # exceptions: what they derive from
            else: sig = self.nm
            doc = f"{'#' * self.title_level} {self.nm}\n\n```python\n{kind + ' ' if kind else ''}{sig}\n```\n\n"
            if self.docs: doc += f"{self.docs}\n\n"
            with contextlib.suppress(Exception):  # objects without a signature (some builtins) have no table
                table = DocmentTbl(self.sym)
                if table.has_docment: doc += f"{table._repr_markdown_()}\n"
            return doc
    return SignatureTable

def _module_names(nb) -> list[str]:
    "The modules a notebook exports to (its `default_exp`)."
    names = []
    for cell in nb.cells:
        for line in cell.source.splitlines() if cell.cell_type == "code" else []:
            m = DIRECTIVE.match(line)
            if m and m.group(1) == "default_exp": names.append(m.group(2).split()[0])
    return names

def _only_imports(source:str) -> bool:
    import ast
    try: tree = ast.parse(source)
    except SyntaxError: return False
    return bool(tree.body) and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in tree.body)

def process_notebook(path:Path, package:str):
    "The notebook as nbdev's processors leave it for rendering, with its `show_doc` cells run."
    from fastcore.nbio import read_nb
    from nbdev.processors import FilterDefaults, exec_show_docs, _show_docs
    from nbdev.showdoc import show_doc
    mods = _module_names(read_nb(path))

    class ShowDocs(exec_show_docs):
        # nbdev runs every cell with an import in it, tests included; the pages need only the exported
        # names, which the installed package already holds, and the notebook's plain import cells
        def begin(self):
            from execnb.shell import CaptureShell
            self.k = CaptureShell()
            for mod in mods: self.k.run_cell(f"from {package}.{mod} import *\nimport {package}.{mod} as _m\n"
                                            "globals().update({k: v for k, v in vars(_m).items() if not k.startswith('__')})")
            self.k.user_ns["show_doc"] = partial(show_doc, renderer=_renderer())
        def __call__(self, cell):
            if not getattr(self.nb, "has_docs_", False) or cell.cell_type != "code" or not cell.source: return
            if str(getattr(self.nb, "frontmatter_", {}).get("skip_showdoc", "")).lower() == "true": return
            trees = cell.parsed_()
            if not trees: return
            if _show_docs(trees) or (_only_imports(cell.source) and not cell.directives_.keys() & {"export", "exporti", "exports"}):
                self.k.cell(cell)
                if self.k.exc: raise RuntimeError(f"{path.name}, cell {cell.idx_} ({cell.source[:60]!r}): {type(self.k.exc).__name__}: {self.k.exc}")

    class Docs(FilterDefaults):
        def base_procs(self): return [ShowDocs if p is exec_show_docs else p for p in super().base_procs()]

    nb = read_nb(path)
    with warnings.catch_warnings(), contextlib.chdir(path.parent):
        warnings.simplefilter("ignore")
        Docs()(nb)
    return nb

# -- pages ------------------------------------------------------------------------------------------------------

def _directives(source:str) -> tuple[dict, str]:
    "Quarto's cell options left by nbdev (`#| echo: false` ...) and the source without them."
    opts, lines = {}, source.splitlines()
    while lines and (m := DIRECTIVE.match(lines[0])):
        opts[m.group(1)] = m.group(2).lower()
        lines.pop(0)
    return opts, "\n".join(lines)

def _merged_streams(outputs) -> list:
    "Consecutive prints of a cell as one block (papermill's --log-output leaves a stream output per line)."
    merged = []
    for o in outputs:
        o = nbformat.from_dict(dict(o))
        if o.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" and merged[-1].name == o.name:
            merged[-1].text += o.text if isinstance(o.text, str) else "".join(o.text)
        else:
            if o.get("output_type") == "stream" and not isinstance(o.text, str): o.text = "".join(o.text)
            merged.append(o)
    return merged

def page_cells(nb) -> nbformat.NotebookNode:
    "An nbformat notebook of what a reader sees: no raw front matter, no empty cells, cell options applied."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "raw": continue
        source = cell.get("source", "")
        if cell.cell_type == "markdown":
            if source.strip() and not re.fullmatch(r"\s*<!--.*?-->\s*", source, re.S): cells.append(nbformat.v4.new_markdown_cell(source))
            continue
        opts, source = _directives(source)
        if opts.get("include") == "false": continue
        outputs = [] if opts.get("output") == "false" else _merged_streams(cell.get("outputs", []))
        if opts.get("echo") == "false": source = ""
        if not source.strip() and not outputs: continue
        new = nbformat.v4.new_code_cell(source, outputs=outputs)
        new.metadata["transient"] = {"remove_source": not source.strip()}
        cells.append(new)
    return nbformat.v4.new_notebook(cells=cells, metadata=dict(nb.get("metadata", {})))

def _exporter(no_input:bool=False) -> HTMLExporter:
    "nbconvert's body-only template, without prompts and with nothing fetched from a CDN."
    e = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True, exclude_input=no_input)
    e.mathjax_url = e.require_js_url = ""
    if hasattr(e, "mermaid_js_url"): e.mermaid_js_url = ""
    return e

def render_body(nb, no_input:bool=False) -> str:
    "The page's cells as HTML, hiding the source of cells whose source was removed."
    body, _ = _exporter(no_input).from_notebook_node(nb)
    body = re.sub(r'<div class="jp-Cell-inputWrapper"[^>]*>\s*<div class="jp-Collapser[^"]*">\s*</div>\s*<div class="jp-InputArea jp-Cell-inputArea">\s*'
                  r'<div class="jp-CodeMirrorEditor jp-Editor jp-InputArea-editor"[^>]*>\s*<div class="highlight hl-ipython3">\s*<pre><span></span>\s*</pre>\s*</div>\s*</div>\s*</div>\s*</div>',
                  "", body)
    return re.sub(r'<script[^>]*src=""[^>]*>\s*</script>', "", body)

def _markdown_inline(text:str) -> str:
    "A summary line's markdown (code spans, emphasis, links) as HTML."
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    out = markdown2html_mistune(text).strip()
    return re.sub(r"^<p>(.*)</p>$", r"\1", out, flags=re.S)

CSS = """
:root { --text:#1f2328; --muted:#59636e; --line:#d1d9e0; --code:#f6f8fa; --accent:#0b5cad; }
* { box-sizing:border-box; }
html { font-size:16px; }
body { margin:0; color:var(--text); background:#fff; line-height:1.6;
  font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Noto Sans","Liberation Sans",Arial,sans-serif; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.site { display:flex; min-height:100vh; }
nav.sidebar { flex:0 0 16rem; border-right:1px solid var(--line); padding:1.2rem 1rem; background:#fafbfc;
  position:sticky; top:0; height:100vh; overflow-y:auto; font-size:.9rem; }
nav.sidebar .home { display:block; font-weight:700; font-size:1.1rem; margin-bottom:1rem; color:var(--text); }
nav.sidebar ol { list-style:none; padding:0; margin:0; }
nav.sidebar li a { display:block; padding:.15rem .5rem; border-radius:4px; color:var(--text); }
nav.sidebar li a.current { background:#e7f0fa; color:var(--accent); font-weight:600; }
main { flex:1 1 auto; min-width:0; max-width:60rem; padding:1.5rem 2.5rem 4rem; }
header h1 { font-size:2.1rem; margin:.2rem 0 .4rem; line-height:1.25; }
header .summary { font-size:1.15rem; color:var(--muted); margin:0 0 1.5rem; }
h1, h2, h3, h4 { line-height:1.3; } h2 { margin-top:2.2rem; border-bottom:1px solid var(--line); padding-bottom:.2rem; }
h3 { margin-top:1.8rem; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace; font-size:1.1rem; }
.anchor-link { display:none; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace; font-size:.86rem; }
:not(pre) > code { background:var(--code); padding:.1rem .3rem; border-radius:4px; }
pre { background:var(--code); padding:.7rem .9rem; border-radius:6px; overflow-x:auto; line-height:1.45; margin:.6rem 0; }
.jp-OutputArea pre { background:#fff; border:1px solid var(--line); }
.jp-OutputArea-output.jp-RenderedMarkdown pre { background:var(--code); border:0; }
table { border-collapse:collapse; margin:.8rem 0; font-size:.9rem; display:block; overflow-x:auto; }
th, td { border:1px solid var(--line); padding:.3rem .6rem; text-align:left; vertical-align:top; }
th { background:var(--code); }
img { max-width:100%; height:auto; }
.jp-Cell { margin:.4rem 0; } .jp-OutputArea-output { overflow-x:auto; }
.jp-RenderedText pre .ansi-red-fg { color:#b3261e; }
.pager { display:flex; justify-content:space-between; border-top:1px solid var(--line); margin-top:3rem; padding-top:1rem; }
.pages dt { font-weight:600; margin-top:.8rem; } .pages dd { margin:0 0 0 1rem; color:var(--muted); }
.report-link { background:#eef6ee; border:1px solid #b7dbb7; padding:.6rem .9rem; border-radius:6px; }
@media (max-width: 50rem) { .site { display:block; } nav.sidebar { position:static; height:auto; border-right:0; border-bottom:1px solid var(--line); } }
"""

def _page(title:str, summary:str, body:str, nav:str="", pager:str="") -> str:
    style = CSS + HtmlFormatter(style="default").get_style_defs(".highlight")
    head = f"<header><h1>{html.escape(title)}</h1>" + (f"<p class='summary'>{summary}</p>" if summary else "") + "</header>"
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)} · {PROJECT}</title><style>{style}</style></head>\n"
            f"<body><div class='site'>{nav}<main>{head}{body}{pager}</main></div></body></html>\n")

def _nav(pages, current:str|None) -> str:
    items = "".join(f"<li><a href='{p['file']}'{' class=current' if p['file'] == current else ''}>{html.escape(p['title'])}</a></li>" for p in pages)
    return f"<nav class='sidebar'><a class='home' href='index.html'>{PROJECT}</a><ol>{items}</ol></nav>"

def _pager(pages, i:int) -> str:
    prev = f"<a href='{pages[i - 1]['file']}'>← {html.escape(pages[i - 1]['title'])}</a>" if i > 0 else "<span></span>"
    nxt = f"<a href='{pages[i + 1]['file']}'>{html.escape(pages[i + 1]['title'])} →</a>" if i + 1 < len(pages) else "<span></span>"
    return f"<div class='pager'>{prev}{nxt}</div>"

def symbol_links(package:str) -> dict[str, str]:
    "Exported name -> its place in the site (`page.html#name`), from nbdev's index of the package; names two modules share are left out."
    from importlib import import_module
    syms = import_module(f"{package}._modidx").d["syms"]
    found = {}
    for mod, entries in syms.items():
        for full, (link, _) in entries.items():
            name = full[len(mod) + 1:]
            # the page from nbdev, the anchor from the heading `show_doc` writes (nbdev's anchors are quarto's, lower case)
            if not name.startswith("_") and "." not in name: found.setdefault(name, []).append(f"{link.split('#')[0]}#{name}")
    return {name: links[0] for name, links in found.items() if len(links) == 1}

def _link_names(body:str, links:dict[str, str]) -> str:
    "`name` and `name()` in prose link to where the name is documented, as on nbdev's pages."
    def link(m):
        target = links.get(m.group(2))
        return m.group(0) if m.group(1) or target is None else f'<a href="{target}">{m.group(0)}</a>'
    return re.sub(r"(<a [^>]*>)?<code>([A-Za-z]\w*)(?:\(\))?</code>", link, body)

def notebooks(nbs:Path) -> list[Path]:
    "The documented notebooks in data-flow order: numbered ones by number, then the orchestration notebook."
    return sorted(nbs.glob("[0-9]*.ipynb")) + sorted(nbs.glob("run_*.ipynb"))

def render_site(nbs:Path, out:Path, report:Path|None=None, package:str="deepfake_mlops") -> list[dict]:
    "Write one page per notebook and an index into `out`; returns the pages (file, title, summary, source)."
    out.mkdir(parents=True, exist_ok=True)
    pages = []
    for path in notebooks(nbs):
        nb = process_notebook(path, package)
        fm = getattr(nb, "frontmatter_", {}) or {}
        file = fm.get("output-file") or re.sub(r"^\d+[a-z]?_", "", path.stem) + ".html"
        pages.append(dict(file=file, title=fm.get("title", path.stem), summary=fm.get("description", ""), source=path.name, nb=nb))
    links = symbol_links(package)
    for i, p in enumerate(pages):
        body = _link_names(render_body(page_cells(p["nb"])), links)
        text = _page(p["title"], _markdown_inline(p["summary"]) if p["summary"] else "", body, _nav(pages, p["file"]), _pager(pages, i))
        _write(out/p["file"], text)
    _write(out/"index.html", _index(pages, out, report))
    return [{k: v for k, v in p.items() if k != "nb"} for p in pages]

def _index(pages, out:Path, report:Path|None) -> str:
    readme = Path(__file__).resolve().parents[1]/"README.md"
    lead = ""
    if readme.exists():
        blocks = readme.read_text().split("\n\n")[1:]
        para = next((b for b in blocks if b.strip() and b.strip() != TAGLINE and not b.lstrip().startswith(("#", "[", "!", "<", "`", "|"))), "")
        lead = f"<p>{_markdown_inline(para)}</p>" if para else ""
    if report is not None and report.exists():
        rel = os.path.relpath(report.resolve(), out.resolve())
        lead += f"<p class='report-link'>Latest run report: <a id='latest-report' href='{html.escape(rel)}'>{html.escape(report.name)}</a></p>"
    else:
        lead += "<p class='report-link'>No run report yet: <code>make run</code> writes <code>runs/report/run_pipeline.html</code>.</p>"
    items = "".join(f"<dt><a href='{p['file']}'>{html.escape(p['title'])}</a></dt><dd>{_markdown_inline(p['summary']) if p['summary'] else ''}</dd>" for p in pages)
    body = f"{lead}<h2>The notebooks, in data-flow order</h2><dl class='pages'>{items}</dl>"
    return _page(PROJECT, TAGLINE, body, _nav(pages, "index.html"))

def render_report(ipynb:Path, out:Path|None=None, docs:Path|None=None) -> Path:
    "An executed notebook as a run report: its results without the code, in the site's look."
    nb = nbformat.read(ipynb, as_version=4)
    title, summary = ipynb.stem, ""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (m := re.search(r"^# (.+)$", cell.source, re.M)):
            title = m.group(1).strip()
            s = re.search(r"^> (.+)$", cell.source, re.M)
            summary = s.group(1).strip() if s else ""
            cell.source = re.sub(r"^(# .+|> .+)\n?", "", cell.source, flags=re.M)  # shown once, as the page's header
            break
    out = out or ipynb.with_suffix(".html")
    view = page_cells(nb)
    view.cells = [c for c in view.cells if not (c.cell_type == "code" and not c.outputs)]
    nav = ""
    if docs is not None and (docs/"index.html").exists():
        nav = f"<nav class='sidebar'><a class='home' href='{html.escape(os.path.relpath((docs/'index.html').resolve(), out.resolve().parent))}'>{PROJECT}</a></nav>"
    _write(out, _page(title, _markdown_inline(summary) if summary else "", render_body(view, no_input=True), nav))
    return out

def _write(path:Path, text:str):
    "Whole or not at all: a reader never opens a half-written page."
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    site = sub.add_parser("site", help="the notebooks as a site: one page each and an index")
    site.add_argument("--nbs", type=Path, default=Path("nbs"))
    site.add_argument("--out", type=Path, default=Path("_docs"))
    site.add_argument("--report", type=Path, default=Path("runs/report/run_pipeline.html"), help="the run report the index links to")
    rep = sub.add_parser("report", help="an executed notebook as a run report (results, no code)")
    rep.add_argument("notebook", type=Path)
    rep.add_argument("--out", type=Path, default=None, help="default: the notebook's path with .html")
    rep.add_argument("--docs", type=Path, default=None, help="a rendered site to link back to")
    a = ap.parse_args(argv)
    if a.what == "site":
        pages = render_site(a.nbs, a.out, a.report)
        print(f"{len(pages)} pages in {a.out}/index.html")
    else:
        print(f"report: {render_report(a.notebook, a.out, a.docs)}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
