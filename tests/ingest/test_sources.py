"""The source readers against real files of every supported type, built in tmp_path."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from fengchao_chains.ingest import (
    SourceError,
    SourceItem,
    SourceProblem,
    content_hash,
    estimate_total,
    read_source,
)
from fengchao_chains.ingest.sources import normalise_date

ARTICLE = "北京今天发布了新的交通政策。市民普遍表示欢迎！这项政策何时生效？"


def items(entries: object) -> list[SourceItem]:
    assert isinstance(entries, list)
    return [entry for entry in entries if isinstance(entry, SourceItem)]


def problems(entries: object) -> list[SourceProblem]:
    assert isinstance(entries, list)
    return [entry for entry in entries if isinstance(entry, SourceProblem)]


def write_jsonl(path: Path, lines: Sequence[object]) -> Path:
    text = "".join(
        (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
        for line in lines
    )
    path.write_text(text, encoding="utf-8")
    return path


# --- JSONL -------------------------------------------------------------------------------------


def test_jsonl_items_keep_fields_and_report_bad_lines_with_their_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "news.jsonl",
        [
            {
                "id": 17,
                "title": " 交通新政 ",
                "content": ARTICLE,
                "url": "https://news.example.cn/a",
                "published_at": "2024年5月1日 08:30",
                "source": "新华社",
                "category": "城市",
                "tags": ["交通", "北京"],
            },
            "{not json",
            "[1, 2]",
            {"title": "没有正文"},
            "",
            {"text": "正文在 text 字段。", "url": "https://news.example.cn/b"},
            {"body": "正文在 body 字段。", "title": "标题", "published_at": "昨天"},
            {"content": "   ", "body": "空白的 content 让位给 body。"},
            {"content": ARTICLE, "title": {"nested": True}},
        ],
    )
    entries = list(read_source(path))

    first = entries[0]
    assert isinstance(first, SourceItem)
    assert first.document_id == "17"
    assert first.content == ARTICLE
    assert first.location == f"{path}:1"
    assert first.metadata == {
        "title": "交通新政",
        "url": "https://news.example.cn/a",
        "published_at": "2024-05-01T08:30:00",
        "source": "新华社",
        "category": "城市",
        "tags": ["交通", "北京"],
    }

    assert [(p.location, p.reason.split(":")[0]) for p in problems(entries)] == [
        (f"{path}:2", "not valid JSON"),
        (f"{path}:3", "not a JSON object (got an array)"),
        (f"{path}:4", "no content"),
        (f"{path}:9", "'title' is an object, not text"),
    ]
    by_line = {item.location.rsplit(":", 1)[1]: item for item in items(entries)}
    assert by_line["6"].document_id == "https://news.example.cn/b"  # no id: the url
    assert by_line["6"].content == "正文在 text 字段。"
    hashed = by_line["7"]
    assert hashed.document_id.startswith("sha256:")  # neither id nor url: title + content
    assert "published_at" not in hashed.metadata
    assert hashed.metadata["published_at_raw"] == "昨天"
    assert by_line["8"].content == "空白的 content 让位给 body。"
    assert set(by_line) == {"1", "6", "7", "8"}


def test_jsonl_with_bom_invalid_utf8_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "dump.ndjson"
    good = json.dumps({"id": "a", "content": "第一段。\r\n\r\n\r\n第二段。"}, ensure_ascii=False)
    path.write_bytes(
        b"\xef\xbb\xbf" + good.encode() + b"\r\n" + b'{"id": "b", "content": "\xff\xfe"}\n'
    )
    entries = list(read_source(path))
    assert len(entries) == 2
    item, problem = entries
    assert isinstance(item, SourceItem)
    assert item.content == "第一段。\n\n第二段。"
    assert problem == SourceProblem(f"{path}:2", "the line is not valid UTF-8")


def test_stdin_text_and_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = json.dumps({"id": "s1", "content": ARTICLE}, ensure_ascii=False) + "\nnope\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    entries = list(read_source("-"))
    assert [type(e).__name__ for e in entries] == ["SourceItem", "SourceProblem"]
    assert entries[0].location == "<stdin>:1"
    assert entries[1].location == "<stdin>:2"

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines.encode()), "utf-8"))
    assert [i.document_id for i in items(list(read_source("-")))] == ["s1"]
    assert estimate_total("-") is None


def test_reading_the_same_dump_twice_gives_the_same_ids_and_hashes(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "news.jsonl",
        [{"title": f"标题{n}", "content": f"{ARTICLE}{n}"} for n in range(5)]
        + [{"id": "x", "content": ARTICLE, "title": "旧标题"}],
    )
    first = items(list(read_source(path)))
    second = items(list(read_source(path)))
    assert [i.document_id for i in first] == [i.document_id for i in second]
    assert len({i.document_id for i in first}) == 6
    assert [content_hash(i) for i in first] == [content_hash(i) for i in second]

    write_jsonl(path, [{"id": "x", "content": ARTICLE, "title": "新标题"}])
    (retitled,) = items(list(read_source(path)))
    assert retitled.document_id == "x"
    assert content_hash(retitled) != content_hash(first[-1])  # a new title re-ingests


def test_a_document_over_the_limit_is_a_problem(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "news.jsonl",
        [{"id": "big", "content": "长" * 101}, {"id": "ok", "content": "短"}],
    )
    entries = list(read_source(path, max_document_chars=100))
    assert isinstance(entries[0], SourceProblem)
    assert "101 characters, over the limit of 100" in entries[0].reason
    assert [i.document_id for i in items(entries)] == ["ok"]


STREAM_PROBE = """
import resource, sys
from fengchao_chains.ingest import SourceItem, read_source

entries = read_source(sys.argv[1])
count = isinstance(next(entries), SourceItem)  # the file is open, its buffers allocated
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count += sum(isinstance(entry, SourceItem) for entry in entries)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(count, (after - before) * 1024)
"""


def test_streaming_a_large_jsonl_keeps_memory_flat(tmp_path: Path) -> None:
    """The peak resident size of a fresh process hardly moves while it reads 200,000 lines.
    (tracemalloc would say the same but slows every allocation about six times over, which
    takes this test from about 1 s to over 5.)"""
    path = tmp_path / "large.jsonl"
    line = '{"id": "%d", "title": "标题%d", "content": "北京今天发布了新的交通政策。%d"}\n'
    with path.open("w", encoding="utf-8") as file:
        file.writelines(line % (n, n, n) for n in range(200_000))
    size = path.stat().st_size
    assert estimate_total(path) == 200_000

    probe = subprocess.run(
        [sys.executable, "-c", STREAM_PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    count, growth = map(int, probe.stdout.split())
    assert count == 200_000
    assert growth < size / 10, f"resident size grew {growth} bytes for a {size}-byte file"


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_with_bom_extra_columns_and_a_multiline_field(tmp_path: Path) -> None:
    path = tmp_path / "news.csv"
    path.write_bytes(
        "id,title,content,published_at,source,作者,url\r\n"
        "n1,交通新政,北京今天发布了新政策。,2024/5/1 8:30,新华社,张三,\r\n"
        'n2,多行,"第一行。\r\n第二行。",,,,https://x.cn/2\r\n'
        "n3,多一列,正文。,,,,,多余\r\n"
        "n4,无正文,,,,,\r\n".encode("utf-8-sig")
    )
    entries = list(read_source(path))
    first, second = items(entries)
    assert first.document_id == "n1"
    assert first.metadata == {
        "title": "交通新政",
        "published_at": "2024-05-01T08:30:00",
        "source": "新华社",
        "作者": "张三",
    }  # empty cells (url here) are left out
    assert first.location == f"{path}:2"
    assert second.content == "第一行。\n第二行。"
    assert second.metadata["url"] == "https://x.cn/2"
    assert second.location == f"{path}:3"
    assert [(p.location, p.reason) for p in problems(entries)] == [
        (f"{path}:5", "8 fields, the header has 7"),
        (f"{path}:6", "no content: expected a 'content', 'text' or 'body' text"),
    ]
    assert estimate_total(path) == 5  # physical lines, a quoted line break counts


def test_gbk_csv_from_excel_and_a_csv_without_a_content_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("title,text\r\n新政,北京发布新政策。\r\n".encode("gbk"))
    (item,) = items(list(read_source(path)))
    assert item.content == "北京发布新政策。"
    assert item.metadata["title"] == "新政"

    headless = tmp_path / "wrong.csv"
    headless.write_text("标题,正文\n新政,北京。\n", encoding="utf-8")
    assert list(read_source(headless)) == [
        SourceProblem(f"{headless}:1", "no 'content', 'text' or 'body' column")
    ]


# --- document files ----------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[str]) -> None:
    from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont  # type: ignore[import-untyped]
    from reportlab.pdfgen import canvas  # type: ignore[import-untyped]

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = canvas.Canvas(str(path))
    for text in pages:
        pdf.setFont("STSong-Light", 12)
        pdf.drawString(72, 750, text)
        pdf.showPage()
    pdf.save()


def make_docx(path: Path, heading: str, paragraphs: list[str]) -> None:
    import docx

    document = docx.Document()
    document.add_heading(heading, 0)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    document.save(str(path))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "docs" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a-utf8.txt").write_text(ARTICLE, encoding="utf-8")
    (root / "b-gbk.txt").write_bytes("上海今天天气晴朗。\r\n气温二十度。".encode("gbk"))
    (root / "c.md").write_text(
        "```\n# 不是标题\n```\n\n## 上海 新闻 ##\n\n正文第一段。\n", encoding="utf-8"
    )
    (root / "docs" / "page.html").write_bytes(
        '<html><head><meta charset="gbk"><title> 新闻网页 </title>'
        '<meta property="article:published_time" content="2024-05-01T08:30:00+08:00">'
        "<script>var x = 1;</script><style>p {}</style></head>"
        "<body><h1>大标题</h1><p>第一段，<b>重点</b>内容。</p><p>第二段！</p></body></html>"
        .encode("gbk")
    )  # fmt: skip
    make_pdf(root / "docs" / "report.pdf", ["第一页：北京发布新政策。", "第二页：上海天气晴朗！"])
    make_docx(root / "docs" / "deep" / "memo.docx", "备忘录", ["段落一。", "段落二！"])
    (root / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (root / "docs" / "broken.docx").write_bytes(b"not a zip")
    (root / "image.png").write_bytes(b"\x89PNG")  # not a document: ignored
    (root / ".git" / "HEAD.txt").write_text("hidden", encoding="utf-8")
    (root / ".hidden.md").write_text("# hidden", encoding="utf-8")
    return root


def test_a_directory_of_every_document_type(corpus: Path) -> None:
    entries = list(read_source(corpus))
    assert [e.location for e in entries] == [
        str(corpus / name)
        for name in (
            "a-utf8.txt",
            "b-gbk.txt",
            "c.md",
            "docs/broken.docx",
            "docs/broken.pdf",
            "docs/deep/memo.docx",
            "docs/page.html",
            "docs/report.pdf",
        )
    ]
    found = {item.document_id: item for item in items(entries)}
    assert set(found) == {
        "a-utf8.txt", "b-gbk.txt", "c.md", "docs/deep/memo.docx", "docs/page.html",
        "docs/report.pdf",
    }  # fmt: skip
    assert found["a-utf8.txt"].content == ARTICLE
    assert found["a-utf8.txt"].metadata == {"title": "a-utf8", "source": "a-utf8.txt"}
    assert found["b-gbk.txt"].content == "上海今天天气晴朗。\n气温二十度。"
    assert found["c.md"].metadata["title"] == "上海 新闻"
    assert "正文第一段。" in found["c.md"].content

    page = found["docs/page.html"]
    assert page.metadata == {
        "title": "新闻网页",
        "published_at": "2024-05-01T08:30:00+08:00",
        "source": "docs/page.html",
    }
    assert page.content == "大标题\n第一段，重点内容。\n第二段！"

    assert found["docs/report.pdf"].content == "第一页：北京发布新政策。\n\n第二页：上海天气晴朗！"
    assert found["docs/report.pdf"].metadata["title"] == "report"
    memo = found["docs/deep/memo.docx"]
    assert memo.content == "备忘录\n\n段落一。\n\n段落二！"
    assert memo.metadata["source"] == "docs/deep/memo.docx"

    broken = {p.location: p.reason for p in problems(entries)}
    assert broken[str(corpus / "docs/broken.pdf")].startswith("cannot parse the PDF file: ")
    assert broken[str(corpus / "docs/broken.docx")].startswith("cannot parse the DOCX file: ")
    assert estimate_total(corpus) == 8


def test_document_ids_are_stable_and_glob_selects_files(corpus: Path) -> None:
    first = [(i.document_id, content_hash(i)) for i in items(list(read_source(corpus)))]
    again = [(i.document_id, content_hash(i)) for i in items(list(read_source(corpus)))]
    assert first == again

    pdfs = list(read_source(corpus, glob="*.pdf"))
    assert [e.location for e in pdfs] == [
        str(corpus / "docs/broken.pdf"),
        str(corpus / "docs/report.pdf"),
    ]
    assert [e.location for e in read_source(corpus, glob="docs/deep/*")] == [
        str(corpus / "docs/deep/memo.docx")
    ]
    assert estimate_total(corpus, glob="*.pdf") == 2


def test_a_single_document_file(corpus: Path) -> None:
    (item,) = list(read_source(corpus / "docs" / "report.pdf"))
    assert isinstance(item, SourceItem)
    assert item.document_id == "report.pdf"
    assert estimate_total(corpus / "docs" / "report.pdf") == 1


def test_unreadable_empty_and_too_large_files_are_problems(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "empty.txt").write_text(" \n\n ", encoding="utf-8")
    (root / "large.txt").write_text("大" * 50, encoding="utf-8")
    (root / "huge.md").write_text("x" * 500, encoding="utf-8")
    (root / "latin.txt").write_bytes(bytes(range(0x80, 0x100)))
    make_pdf(root / "blank.pdf", [""])
    secret = root / "secret.txt"
    secret.write_text("机密。", encoding="utf-8")
    secret.chmod(0)

    reasons = {
        Path(p.location).name: p.reason
        for p in problems(list(read_source(root, max_document_chars=40)))
    }
    assert reasons["empty.txt"] == "no text in the file"
    assert reasons["large.txt"] == "50 characters, over the limit of 40 (max_document_chars)"
    assert reasons["huge.md"] == "500 bytes, over the limit of 40 characters"  # never read
    assert reasons["latin.txt"] == "the text is neither UTF-8 nor GB18030 (GBK)"
    assert reasons["blank.pdf"].startswith("no extractable text in the PDF")
    if os.geteuid() != 0:  # root reads anything
        assert reasons["secret.txt"] == "cannot read the file: Permission denied"


def test_missing_or_unsupported_inputs_raise(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        read_source(tmp_path / "missing.jsonl")
    (tmp_path / "sheet.xlsx").write_bytes(b"")
    with pytest.raises(SourceError, match=r"unsupported source .*sheet\.xlsx"):
        read_source(tmp_path / "sheet.xlsx")
    with pytest.raises(SourceError, match="glob applies to a directory"):
        read_source("-", glob="*.txt")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2024-05-01", "2024-05-01"),
        ("2024-05-01 08:30", "2024-05-01T08:30:00"),
        ("2024-05-01T08:30:00Z", "2024-05-01T08:30:00+00:00"),
        ("2024-05-01T08:30:00+08:00", "2024-05-01T08:30:00+08:00"),
        ("2024/5/1 8:30", "2024-05-01T08:30:00"),
        ("2024.05.01", "2024-05-01"),
        ("2024年5月1日", "2024-05-01"),
        ("2024年5月1日 8时30分15秒", "2024-05-01T08:30:15"),
        ("Wed, 01 May 2024 08:30:00 +0800", "2024-05-01T08:30:00+08:00"),
        (1714521600, "2024-05-01T00:00:00+00:00"),
        (1714521600000, "2024-05-01T00:00:00+00:00"),
        ("1714521600", "2024-05-01T00:00:00+00:00"),
        ("昨天", None),
        ("2024-13-01", None),
        (True, None),
        (None, None),
    ],
)
def test_dates_are_normalised_to_iso_8601(written: object, expected: str | None) -> None:
    assert normalise_date(written) == expected
