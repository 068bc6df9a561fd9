"""`timeline`: the Mermaid text and the HTML page, checked by parsing them and,
where Chromium is installed, by looking at the rendered pixels."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import Result
from helpers import NOW, SINCE, at, build_known_history, build_sample_history, deploy, run_tracker

import deployment_tracker as dt

HOSTILE_BRANCHES = (
    'zzz";echo${IFS}hello;#',
    "feat/$(id)",
    "<script>alert(1)</script>",
    '"><img/src=x/onerror=alert(1)>',
    "a-->b",
    "end",
    "x&amp;y",
    "#35;",
    "`md`",
    "emoji-\U0001f680",
)

KNOWN_MERMAID = """\
flowchart LR
  classDef verified fill:#2da44e,stroke:#1a7f37,color:#ffffff
  classDef failed fill:#cf222e,stroke:#a40e26,color:#ffffff
  classDef deployed fill:#d4a72c,stroke:#9a6700,color:#1f2328
  classDef rolled_back fill:#8c959f,stroke:#57606a,color:#ffffff
  classDef earlier fill:#ffffff,stroke:#8c959f,stroke-dasharray:4 3,color:#57606a
  classDef unknown fill:#ffffff,stroke:#cf222e,color:#1f2328
  subgraph lane1["production"]
    direction LR
    lane1_1["main<br/>1111111 2026-04-02 00:00<br/>verified"]:::verified
    lane1_2["main<br/>2222222 2026-04-03 00:00<br/>failed"]:::failed
    lane1_3(["main<br/>1111111 2026-04-03 00:20<br/>rollback, verified"]):::verified
    lane1_4["main<br/>4444444 2026-04-05 00:00<br/>verified"]:::verified
    lane1_5["main<br/>5555555 2026-04-06 00:00<br/>rolled back"]:::rolled_back
    lane1_6(["main<br/>4444444 2026-04-06 06:00<br/>rollback, verified"]):::verified
    lane1_7["feature/x<br/>7777777 2026-04-08 00:00<br/>failed"]:::failed
    lane1_1 --> lane1_2
    lane1_2 --> lane1_3
    lane1_3 --> lane1_4
    lane1_4 --> lane1_5
    lane1_5 --> lane1_6
    lane1_6 --> lane1_7
    lane1_3 -. rollback .-> lane1_1
    lane1_6 -. rollback .-> lane1_4
  end
  subgraph lane2["staging"]
    direction LR
    lane2_1["main<br/>1111111 2026-04-01 23:00<br/>verified"]:::verified
    lane2_2["branch_1<br/>ccccccc 2026-04-04 00:00<br/>deployed"]:::deployed
    lane2_1 --> lane2_2
  end
  linkStyle 6,7 stroke:#8250df,stroke-width:2px,color:#8250df
"""


@pytest.fixture
def known(db_path: Path) -> dict[str, str]:
    return build_known_history(db_path)


@pytest.fixture
def reader(db_path: Path) -> Iterator[sqlite3.Connection]:
    db = dt.connect(str(db_path), write=True)
    yield db
    db.close()


Draw = Callable[..., str]


@pytest.fixture
def timeline(cli: Callable[..., Result]) -> Draw:
    """What `timeline` prints for the window from `since` to now (the histories are older)."""

    def draw(output_format: str, *, since: datetime = SINCE, environment: str | None = None) -> str:
        args = ["timeline", "--since", since.isoformat(), "-o", output_format]
        result = cli(*args, *(["-e", environment] if environment else []))
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        return result.stdout

    return draw


# Mermaid


def test_mermaid_for_the_known_history_from_a_real_process(
    known: dict[str, str], db_path: Path
) -> None:
    drawn = run_tracker("timeline", "--since", "2026-04-01", "-o", "mermaid", db=db_path)
    assert (drawn.returncode, drawn.stderr) == (0, "")
    assert drawn.stdout == KNOWN_MERMAID


def test_cli_prints_the_same_mermaid(known: dict[str, str], cli: Callable[..., Result]) -> None:
    result = cli("timeline", "--since", "2026-04-01", "--format", "mermaid")
    assert result.exit_code == 0, result.output
    assert result.stdout == KNOWN_MERMAID


def test_mermaid_rollback_to_a_deployment_before_the_window(
    timeline: Draw, known: dict[str, str], reader: sqlite3.Connection
) -> None:
    # From 04-03 00:10, p1 (which p3 restored) is outside: it is drawn as an
    # "earlier" node, kept in place by an invisible link.
    text = timeline("mermaid", since=at("04-03 00:10"), environment="production")
    lines = text.splitlines()
    assert '    lane1_earlier1["main<br/>1111111 2026-04-02 00:00<br/>verified"]:::earlier' in lines
    assert "    lane1_earlier1 ~~~ lane1_1" in lines
    assert "    lane1_1 -. rollback .-> lane1_earlier1" in lines
    assert "    lane1_4 -. rollback .-> lane1_2" in lines
    assert lines[-1] == "  linkStyle 5,6 stroke:#8250df,stroke-width:2px,color:#8250df"


def test_mermaid_shows_the_newest_per_environment(
    timeline: Draw, reader: sqlite3.Connection
) -> None:
    start = at("04-01 00:00")
    for number in range(dt.MERMAID_MAX_PER_ENVIRONMENT + 5):
        deploy(reader, "qa", start + timedelta(hours=number), sha=f"{number:07x}" + "a" * 33)
    text = timeline("mermaid")
    assert '    lane1_more["5 earlier"]:::earlier' in text
    assert "    lane1_more --> lane1_1" in text
    assert f"lane1_{dt.MERMAID_MAX_PER_ENVIRONMENT}[" in text
    assert f"lane1_{dt.MERMAID_MAX_PER_ENVIRONMENT + 1}[" not in text
    assert "0000018 2026-04-02 00:00" in text  # the newest


def test_mermaid_empty(timeline: Draw, db_path: Path, reader: sqlite3.Connection) -> None:
    assert timeline("mermaid").endswith('  none["no deployments"]:::earlier\n')
    text = timeline("mermaid", environment="qa")
    assert '    lane1_none["no deployments"]:::earlier' in text.splitlines()


NODE = re.compile(r'    lane1_\d+(\["|\(\[")(?P<label>[^"]*)("\]|"\]\)):::\w+')


def test_mermaid_escapes_hostile_branch_names(timeline: Draw, reader: sqlite3.Connection) -> None:
    for number, branch in enumerate(HOSTILE_BRANCHES):
        deploy(reader, "end", at("04-02 00:00") + timedelta(minutes=number), branch=branch)
    text = timeline("mermaid")
    node_lines = [
        line for line in text.splitlines() if line.startswith("    lane1_") and "[" in line
    ]
    assert len(node_lines) == len(HOSTILE_BRANCHES)
    for line, branch in zip(node_lines, HOSTILE_BRANCHES):
        match = NODE.fullmatch(line)
        assert match, line
        label = match["label"].split("<br/>")[0]
        # Nothing that Mermaid, Markdown or HTML could read as syntax survives...
        assert not set(re.sub(r"#\d+;", "", label)) & set("\"'<>&`#;[](){}|%\\")
        # ...and the entity codes give the name back exactly.
        assert re.sub(r"#(\d+);", lambda code: chr(int(code[1])), label) == branch
    assert '  subgraph lane1["end"]' in text


# HTML


class PageParser(HTMLParser):
    """Collects every element, and the marks with their hover text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.marks: list[dict[str, str]] = []
        self.styles = ""
        self.text: list[str] = []
        self._open_mark: dict[str, str] | None = None
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = {name: value or "" for name, value in attrs}
        if "mark" in attributes.get("class", "").split():
            self._open_mark = {"class": attributes["class"], "tag": tag, "title": ""}
            self.marks.append(self._open_mark)
        self._in.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag in ("circle", "path"):
            self._open_mark = None

    def handle_data(self, data: str) -> None:
        where = self._in[-1] if self._in else ""
        if where == "style":
            self.styles += data
        elif where == "title" and self._open_mark is not None:
            self._open_mark["title"] += data
        else:
            self.text.append(data)


def parse_page(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    # The SVG is well-formed XML too: nothing in it was left unescaped.
    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    ElementTree.fromstring(svg)
    return parser


def test_html_has_one_mark_per_deployment_with_its_status(
    timeline: Draw, known: dict[str, str], reader: sqlite3.Connection
) -> None:
    page = timeline("html")
    parsed = parse_page(page)
    in_window = [
        dt.get_deployment(reader, deployment_id)
        for name, deployment_id in known.items()
        if name != "p0"
    ]
    assert len(parsed.marks) == len(in_window) == 9
    by_id = {mark["title"].split(" ")[0]: mark for mark in parsed.marks}
    for record in in_window:
        mark = by_id[record["id"]]
        assert mark["class"] == f"mark {record['status']}"
        assert mark["tag"] == ("path" if record["rollback_of"] else "circle")
        title = mark["title"]
        assert f"branch {record['branch']}, commit {record['commit_sha'][:12]}" in title
        assert f"by {record['actor']}" in title
        assert f"deployed {record['deployed_at'][:16].replace('T', ' ')} by" in title
    # The colours come from one rule per status.
    for status, (fill, stroke) in dt.STATUS_COLOURS.items():
        assert f".{status}{{fill:{fill};stroke:{stroke}}}" in parsed.styles
    # Two rollback arrows, each titled with what it restored.
    assert len(re.findall(r'<path class="restore" d="[^"]+"><title>', page)) == 2
    assert f"{known['p6']} restored {known['p4']}</title>" in page
    # The stats are above the chart.
    assert page.index('<table class="stats">') < page.index("<svg")
    assert "<td>60% (3/5)</td>" in page


def test_html_is_self_contained(
    timeline: Draw, known: dict[str, str], reader: sqlite3.Connection
) -> None:
    page = timeline("html")
    parsed = parse_page(page)
    assert "script" not in parsed.tags
    assert not {"img", "link", "iframe", "object", "embed"} & set(parsed.tags)
    assert "url(http" not in page
    assert "src=" not in page
    assert "href=" not in page
    assert "default-src 'none'" in page


def test_html_escapes_hostile_branch_names(timeline: Draw, reader: sqlite3.Connection) -> None:
    for number, branch in enumerate(HOSTILE_BRANCHES):
        deploy(reader, "qa", at("04-02 00:00") + timedelta(minutes=number), branch=branch)
    page = timeline("html")
    parsed = parse_page(page)
    assert "script" not in parsed.tags
    assert "img" not in parsed.tags
    assert len(parsed.marks) == len(HOSTILE_BRANCHES)
    titles = [mark["title"] for mark in parsed.marks]
    for branch, title in zip(HOSTILE_BRANCHES, titles):
        assert f"branch {branch}, commit" in title


def test_html_rollback_to_a_deployment_before_the_window(
    timeline: Draw, known: dict[str, str], reader: sqlite3.Connection
) -> None:
    page = timeline("html", since=at("04-03 00:10"), environment="production")
    assert page.count('<path class="restore earlier"') == 1
    assert f"{known['p3']} restored {known['p1']}, deployed 2026-04-02 00:00</title>" in page
    assert len(parse_page(page).marks) == 5


def test_html_empty(timeline: Draw, db_path: Path, reader: sqlite3.Connection) -> None:
    page = timeline("html")
    parsed = parse_page(page)
    assert parsed.marks == []
    assert "No deployments recorded." in page


def test_html_for_5000_deployments_stays_small(timeline: Draw, reader: sqlite3.Connection) -> None:
    reader.execute("PRAGMA synchronous = OFF")  # only to build the history fast
    start = NOW - timedelta(days=60)
    branches = ("main", "feature/JIRA-1234-new-login-form", "fix/cache-headers-on-cdn")
    for number in range(5000):
        environment = ("staging", "production", "qa")[number % 3]
        deployment_id = deploy(
            reader,
            environment,
            start + timedelta(minutes=17 * number),
            branch=branches[number % 3],
            sha=f"{number:08x}" + "c" * 32,
            committed=start + timedelta(minutes=17 * number - 45),
            actor="github-actions[bot]",
        )
        status = "failed" if number % 11 == 0 else "verified"
        dt.verify_deployment(
            reader,
            deployment_id,
            status,
            by="smoke",
            now=start + timedelta(minutes=17 * number + 5),
        )
    page = timeline("html", since=start - timedelta(days=1))
    assert len(page.encode("utf-8")) < 500_000
    parsed = parse_page(page)
    assert len(parsed.marks) == dt.HTML_MAX_DEPLOYMENTS
    assert f"the newest {dt.HTML_MAX_DEPLOYMENTS} of 5000." in page
    assert "<td>5000</td>" not in page  # stats are per environment: 1667, 1667, 1666
    assert "<td>1667</td>" in page


def test_cli_html_and_markdown(known: dict[str, str], cli: Callable[..., Result]) -> None:
    html_page = cli("timeline", "--since", "2026-04-01", "--format", "html")
    assert html_page.exit_code == 0, html_page.output
    assert len(parse_page(html_page.stdout).marks) == 9
    markdown = cli("timeline", "--since", "2026-04-01", "--format", "markdown")
    assert markdown.exit_code == 0, markdown.output
    assert markdown.stdout.startswith("### Deployments from 2026-04-01 00:00 to ")
    assert "| change failure rate     | 60% (3/5)    | 0% (0/2)  |" in markdown.stdout
    assert markdown.stdout.endswith("```mermaid\n" + KNOWN_MERMAID + "```\n")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--format", "svg"), "Invalid value for '-o' / '--output' / '--format'"),
        (("--since", "last week"), "since must be a span"),
        (("--environment", "../etc"), "environment must be lowercase"),
    ],
)
def test_cli_bad_input(
    known: dict[str, str], cli: Callable[..., Result], arguments: tuple[str, ...], message: str
) -> None:
    result = cli("timeline", *arguments)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


# A real browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0) and colour in (2, 6)
    channels = 4 if colour == 6 else 3
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                distances = (abs(estimate - left), abs(estimate - up), abs(estimate - corner))
                nearest = (left, up, corner)[distances.index(min(distances))]
                line[x] = (line[x] + nearest) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [row if channels == 3 else rgb_of(row) for row in rows]


def rgb_of(rgba: bytes) -> bytes:
    return b"".join(rgba[index : index + 3] for index in range(0, len(rgba), 4))


def screenshot(browser: str, page: Path, picture: Path, size: str, profile: Path) -> None:
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--screenshot={picture}",
            f"--window-size={size}",
            "--hide-scrollbars",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_chromium_draws_the_page(tmp_path: Path) -> None:
    """Renders a realistic month in headless Chromium and looks at the pixels.

    With TIMELINE_SCREENSHOT=PATH set, the screenshot is also copied there
    (that is how .github/timeline-example.png is made).
    """
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium to run this check)")
    db_path = tmp_path / "sample.db"
    build_sample_history(db_path, datetime.now(timezone.utc).replace(microsecond=0))
    drawn = run_tracker("timeline", "--since", "28d", "-o", "html", db=db_path)
    assert drawn.returncode == 0, drawn.stderr
    page_path = tmp_path / "timeline.html"
    page_path.write_text(drawn.stdout, encoding="utf-8")
    picture = tmp_path / "timeline.png"
    screenshot(browser, page_path, picture, "1290,740", tmp_path / "profile")
    width, height, rows = read_png(picture.read_bytes())
    assert (width, height) == (1290, 740)
    seen = {bytes(row[index : index + 3]) for row in rows for index in range(0, len(row), 3)}
    for status in ("verified", "failed", "deployed"):
        fill = bytes.fromhex(dt.STATUS_COLOURS[status][0][1:])
        assert fill in seen, f"no {status} mark drawn"
    assert bytes.fromhex(dt.ROLLBACK_COLOUR[1:]) in seen, "no rollback arrow drawn"
    target = os.environ.get("TIMELINE_SCREENSHOT")
    if target:
        shutil.copyfile(picture, target)
