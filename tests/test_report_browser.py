"""Open a generated report in headless Chromium: it loads offline, logs nothing, and draws every figure.

Uses Chromium's own command line (no Python driver): ``--dump-dom`` gives the DOM after scripts ran,
``--enable-logging=stderr`` prints the page's console messages (``INFO:CONSOLE ... source: <url>``,
every level alike, uncaught errors included) and ``--log-net-log`` records each request. A canary
console error and a canary request, injected into a copy of the report, prove that both checks see
what they look for in this Chromium version.
"""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import StudyInfo, build_report
from tests.test_analysis import _optuna_study, trial

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium: `apt-get install -y chromium` (CI installs it)",
)
CANARY_URL = "http://127.0.0.1:9/kon-ray-canary.png"
CANARY = f'<script>console.error("kon-ray-canary")</script><img src="{CANARY_URL}">'
FIGURES = ("fig-heads", "fig-negatives", "fig-hpo-history", "fig-hpo-importance", "fig-hpo-parallel")
TABLES = ("table-joint", "table-ablation", "table-main-db15k", "failures")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Dom(HTMLParser):
    """Ids present, ``tag.class`` of every descendant of each ``<figure id="fig-...">``, and src/href values."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str | None]] = []
        self.inside: dict[str, set[str]] = {}
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.ids.add(a.get("id", ""))
        self.links += [a[k] for k in ("src", "href", "xlink:href") if k in a]
        for _, figure in self.stack:
            if figure:
                self.inside[figure] |= {tag} | {f"{tag}.{c}" for c in a.get("class", "").split()}
        figure = a["id"] if tag == "figure" and a.get("id", "").startswith("fig-") else None
        if figure:
            self.inside[figure] = set()
        if tag not in VOID:
            self.stack.append((tag, figure))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return


def _parse(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for (the browser's own background requests have initiator "not an origin")."""
    text = net_log.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # Chromium may exit before closing the event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = [e.get("params", {}) for e in log["events"] if e["type"] == start]
    return [p["url"] for p in starts if "url" in p and p.get("initiator") != "not an origin"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    heads = [trial(i, i % 3, mrr=0.2 + 0.05 * k + 0.01 * (i % 3), model__k=k) for i, k in enumerate([1, 1, 1, 2, 2, 2, 4, 4, 4, 8])]
    heads.append(trial(10, 3, "ERROR", mrr=float("nan"), error="CUDA out of memory", model__k=8))
    negatives = [trial(i, i % 2, mrr=0.3 + 0.01 * i, loss__negatives=n) | {"study": "negatives"} for i, n in enumerate([16, 16, 128, 128, 512])]
    joint = [trial(i, 0, mrr=0.3, model__joint=j, model__joint_weights=w) | {"study": "joint"}
             for i, (j, w) in enumerate([("sum", "learnable"), ("sum", "constant"), ("product", "learnable")])]  # fmt: skip
    ablation = [trial(i, 0, mrr=0.35, variant=v) | {"study": "ablation"} for i, v in enumerate(["full", "w/o L_sft"])]
    main = [trial(i, i, mrr=0.38) | {"study": "main"} for i in range(3)]
    storage = _optuna_study(folder, 4)
    tables = [pd.DataFrame(rows) for rows in (heads, negatives, joint, ablation, main)]
    infos = [StudyInfo("s", ("heads_curve",), expected_trials=12), StudyInfo("negatives", ("negatives_curve",)),
             StudyInfo("joint", ("joint_probability_table",)), StudyInfo("ablation", ("ablation_table",)),
             StudyInfo("main", ("main_table",), optuna_storage=storage, optuna_study="quad")]  # fmt: skip
    return build_report(tables, folder / "report.html", infos)


def test_report_has_no_network_references(report: Path) -> None:
    page = report.read_text()
    dom = _parse(page)
    assert not [link for link in dom.links if re.match(r"\s*(https?:)?//", link)], dom.links
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", page.split("<script>")[0])  # the CSS before plotly.js
    assert set(FIGURES) | set(TABLES) <= dom.ids


@needs_chromium
def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.html"  # a copy with canaries, so the report itself stays clean
    page.write_text(report.read_text().replace("</body>", CANARY + "</body>"))
    net_log = tmp_path / "net.json"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             f"--log-net-log={net_log}", "--virtual-time-budget=10000", "--dump-dom"]  # fmt: skip
    run = subprocess.run([str(CHROMIUM), *flags, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line and page.as_uri() in line]
    assert any("kon-ray-canary" in line for line in console), "console capture no longer works:\n" + run.stderr[-2000:]
    assert [line for line in console if "kon-ray-canary" not in line] == []
    assert _page_requests(net_log) == [CANARY_URL]  # net log capture works, and the report asks for nothing

    dom = _parse(run.stdout)
    for figure in FIGURES:
        drawn = dom.inside.get(figure, set())
        assert {"div.plotly-graph-div", "svg.main-svg"} <= drawn, f"{figure} was not drawn: {sorted(drawn)[:20]}"
    for figure in ("fig-heads", "fig-negatives", "fig-hpo-history"):
        assert "g.trace" in dom.inside[figure] and "path" in dom.inside[figure]
    assert "partial: 11 of 12 trials finished" not in run.stdout  # 10 finished of 12 expected
    assert "partial: 10 of 12 trials finished" in run.stdout


def test_dom_parser_scopes_figures() -> None:
    dom = _parse('<figure id="fig-a"><div class="x y"><br><svg class="main-svg"></svg></div></figure><p class="z"></p>')
    assert dom.inside == {"fig-a": {"div", "div.x", "div.y", "br", "svg", "svg.main-svg"}}
