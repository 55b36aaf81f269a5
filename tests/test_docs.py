"`make docs` where quarto is not installed: the site `tools/render_docs.py` writes, read in headless Chromium, and the run report in its look."
from __future__ import annotations
import html, importlib, inspect, json, os, re, subprocess, sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
# a proxy nobody listens on: whatever tried to reach the network while rendering would fail, and the render with it
OFFLINE = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")} | {"no_proxy": "", "NO_PROXY": ""}


def _render(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO/"tools"/"render_docs.py"), *map(str, args)], cwd=REPO,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=900)


def _executed_report(path:Path) -> Path:
    "A small executed orchestration notebook: a title, printed results, a cell that printed nothing."
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Pipeline run report\n> Runs the pipeline and reports it.\n\nMore about the run."),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("print('status: Succeeded')", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="Preprocess: done (9.4 s)\n"),
            nbformat.v4.new_output("stream", name="stdout", text="status: Succeeded\n")]),
    ])
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    report = _executed_report(root/"report"/"run_pipeline.ipynb")
    proc = _render("report", report, "--docs", root/"site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _render("site", "--out", root/"site", "--report", report.with_suffix(".html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root/"site", report.with_suffix(".html")


def _requests(browser) -> list[str]:
    "The URLs the browser asked for since the last call (Chrome's performance log)."
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent": urls.append(message["params"]["request"]["url"])
    return urls


def test_index_leads_to_a_module_page_with_signatures_parameter_tables_and_plots_all_offline(site, browser):
    from selenium.webdriver.common.by import By
    docs, report = site
    browser.get_log("performance")  # what earlier tests left in the log
    browser.get((docs/"index.html").as_uri())
    assert browser.title.startswith("deepfake-mlops")
    browser.find_element(By.LINK_TEXT, "Evaluate").click()
    assert browser.current_url.endswith("/evaluate.html")
    assert browser.find_element(By.CSS_SELECTOR, "header h1").text == "Evaluate"
    assert "video-level" in browser.find_element(By.CSS_SELECTOR, "header .summary").text  # the module's summary on top
    # the signature and the table of documented parameters of one exported function, right under its heading
    heading = "//h3[@id='evaluation_report']"
    signature = browser.find_element(By.XPATH, f"{heading}/following::pre[1]").text
    assert signature.startswith("evaluation_report(") and "n_boot:int=1000" in signature
    table = browser.find_element(By.XPATH, f"{heading}/following::table[1]")
    assert browser.find_element(By.XPATH, f"{heading}/following::h3[1]").location["y"] > table.location["y"]
    rows = [r.text for r in table.find_elements(By.TAG_NAME, "tr")]
    assert any(r.startswith("frames pd.DataFrame") and "per frame" in r for r in rows), rows
    assert any(r.startswith("threshold float 0.5") for r in rows) and rows[-1].startswith("Returns dict")
    # plots kept, and drawn: an image the browser decoded
    sizes = browser.execute_script("return [...document.images].filter(i => i.src.startsWith('data:image/png')).map(i => i.naturalWidth)")
    assert sizes and min(sizes) > 100, sizes
    page = browser.page_source
    assert "jp-InputPrompt" not in page and "In&nbsp;[" not in page and "In [" not in browser.find_element(By.TAG_NAME, "main").text
    assert "default_exp" not in page and "#| export" not in page  # directives and exported sources are not shown
    # every request of the two pages stayed on the file system (the page itself is one: the check can fail)
    urls = _requests(browser)
    assert any(u.endswith("/evaluate.html") for u in urls), urls
    assert all(u.startswith(("file://", "data:")) for u in urls), [u for u in urls if not u.startswith(("file://", "data:"))]
    # navigation: the sidebar names the page in data-flow order and leads back to the index, which links the report
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.sidebar li a")]
    assert names.index("Data") < names.index("Model") < names.index("Evaluate") < names.index("Train") < names.index("Serve")
    assert browser.find_element(By.CSS_SELECTOR, "nav.sidebar li a.current").text == "Evaluate"
    browser.find_element(By.CSS_SELECTOR, "nav.sidebar a.home").click()
    browser.find_element(By.ID, "latest-report").click()
    assert browser.current_url == report.as_uri()
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "status: Succeeded" in text and "Preprocess: done" in text and "print(" not in text and "x = 1" not in text
    assert text.count("Pipeline run report") == 1 and "More about the run." in text
    assert all(u.startswith(("file://", "data:")) for u in _requests(browser))


def _exported(module) -> list[str]:
    "The functions and classes a module exports (its `__all__`, which nbdev writes from the exported cells)."
    return [n for n in getattr(module, "__all__", []) if inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n))]


def test_every_exported_function_and_class_is_on_its_module_page_with_its_signature(site):
    from deepfake_mlops._modidx import d
    docs, _ = site
    checked, missing = 0, []
    for mod, syms in d["syms"].items():
        page = next(iter(syms.values()))[0].split("#")[0]  # nbdev's own link for the module: `evaluate.html#...`
        text = (docs/page).read_text()
        for name in _exported(importlib.import_module(mod)):
            m = re.search(rf'<h3 id="{re.escape(name)}".*?<pre>(.*?)</pre>', text, re.S)
            signature = html.unescape(re.sub(r"<[^>]+>", "", m.group(1))) if m else ""
            checked += 1
            if not re.match(rf"(class )?{re.escape(name)}\(", signature): missing.append(f"{page}: {name}")
    assert checked > 200 and not missing, missing


def test_names_in_the_prose_link_to_where_they_are_documented(site):
    docs, _ = site
    pages = {p.name: p.read_text() for p in docs.glob("*.html")}
    links = [(name, target) for name, text in pages.items() for target in re.findall(r'<a href="([\w.]+\.html)(?:#([^"]*))?"', text)]
    anchored = [(name, page, anchor) for name, (page, anchor) in links if anchor]
    broken = [f"{name} -> {page}#{anchor}" for name, page, anchor in anchored if page not in pages or f'id="{anchor}"' not in pages[page]]
    assert len(anchored) > 100 and not broken, broken[:20]
    assert not [f"{name} -> {page}" for name, (page, _) in links if page not in pages]
