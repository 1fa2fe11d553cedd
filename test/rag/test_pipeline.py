"""Tests of the pure RAG pipeline: parsers, tokenizer, chunker, BM25 index.

All documents are built at run time (python-docx for DOCX, a hand-written
one-page PDF with a Helvetica text stream and an exact xref table).
"""

from __future__ import annotations

import io
import threading

import docx
import pypdf
import pytest

from api.rag.chunker import chunk_text
from api.rag.index import BM25Index
from api.rag.parsers import ParseError, parse_document
from api.rag.tokenizer import count_tokens, tokenize
from common.constants import SUPPORTED_SUFFIXES
from test.support.documents import docx_bytes, make_pdf

# --------------------------------------------------------------------------- helpers


def make_docx() -> bytes:
    """Return a DOCX with a heading, a paragraph, a 2x2 table and a final paragraph."""
    document = docx.Document()
    document.add_heading("Warranty terms", level=1)
    document.add_paragraph("Devices are covered for two years.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Model"
    table.cell(0, 1).text = "Years"
    table.cell(1, 0).text = "X100"
    table.cell(1, 1).text = "3"
    document.add_paragraph("Batteries are excluded.")
    return docx_bytes(document)


def build_index(passages: dict[str, str]) -> BM25Index:
    return BM25Index([(chunk_id, tokenize(text)) for chunk_id, text in passages.items()])


# --------------------------------------------------------------------------- parsers


def test_pdf_text_is_extracted():
    data = make_pdf("Hello PDF world.", "Refunds take (at most) 14 days.")
    text = parse_document(data, "Report.PDF")
    assert "Hello PDF world." in text
    assert "Refunds take (at most) 14 days." in text


def test_pdf_without_text_reports_no_text():
    with pytest.raises(ParseError, match="no text found in 'scan.pdf'"):
        parse_document(make_pdf(), "scan.pdf")


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not a pdf", b"%PDF-1.4\n1 0 obj\n<<", make_docx()],
    ids=["empty", "garbage", "truncated", "zip"],
)
def test_corrupt_pdf_raises_parse_error(data):
    with pytest.raises(ParseError) as info:
        parse_document(data, "broken.pdf")
    assert str(info.value) == "could not read PDF: file is damaged or not a PDF"


@pytest.mark.parametrize("user_password", ["secret", ""])
def test_encrypted_pdf(user_password):
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf("Hidden text"))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    if user_password:
        with pytest.raises(ParseError, match="password-protected"):
            parse_document(buffer.getvalue(), "locked.pdf")
    else:  # owner-password-only PDFs open with the empty user password
        assert parse_document(buffer.getvalue(), "locked.pdf") == "Hidden text"


def test_docx_paragraphs_and_table_cells_in_order():
    text = parse_document(make_docx(), "terms.docx")
    assert text.split("\n\n") == [
        "Warranty terms",
        "Devices are covered for two years.",
        "Model | Years",
        "X100 | 3",
        "Batteries are excluded.",
    ]


@pytest.mark.parametrize(
    "data",
    [b"not a zip at all", make_docx()[:400], make_pdf("Hello")],
    ids=["garbage", "truncated", "pdf"],
)
def test_corrupt_docx_raises_parse_error(data):
    with pytest.raises(ParseError, match="could not read DOCX"):
        parse_document(data, "broken.docx")


def test_unsupported_suffix_lists_supported_types():
    with pytest.raises(ParseError) as info:
        parse_document(b"data", "table.xyz")
    message = str(info.value)
    assert message.startswith("unsupported file type '.xyz'; supported: ")
    assert all(suffix in message for suffix in SUPPORTED_SUFFIXES)
    assert isinstance(info.value, ValueError)


def test_html_drops_scripts_and_splits_blocks():
    html = (
        b"<html><head><title>Help</title><style>p{color:red}</style>"
        b"<script>var secret = 1;</script></head><body>"
        b"<h1>Returns</h1><p>Send the item   back\nwithin <b>30</b> days.</p>"
        b"<div>Contact us<br>by mail</div><script>alert('x')</script>"
        b"<table><tr><th>Item</th><th>Days</th></tr><tr><td>TV</td><td><p>30</p></td></tr></table>"
        b"</body></html>"
    )
    text = parse_document(html, "page.html")
    assert "secret" not in text and "alert" not in text and "color" not in text
    assert text.split("\n\n") == [
        "Help",
        "Returns",
        "Send the item back within 30 days.",
        "Contact us\nby mail",
        "Item | Days",
        "TV | 30",
    ]


def test_html_uses_meta_charset():
    html = '<meta charset="gb18030"><p>退货政策</p>'.encode("gb18030")
    assert parse_document(html, "a.htm").endswith("退货政策")


def test_text_decoding_fallbacks():
    assert parse_document("\ufeffcafé".encode("utf-8"), "a.txt") == "café"
    assert parse_document("中文文本".encode("gb18030"), "a.txt") == "中文文本"
    assert parse_document("naïve €".encode("utf-16"), "a.txt") == "naïve €"
    assert parse_document(b"caf\xe9 au lait", "a.txt") == "café au lait"


def test_text_paragraphs_normalised():
    data = b"  First line\r\nsecond line  \r\n\r\n\r\n\n Next para \n"
    assert parse_document(data, "notes.txt") == "First line\nsecond line\n\nNext para"


def test_markdown_markup_is_stripped():
    md = (
        "# Title #\n\nSome **bold** and *italic* text with a [link](http://x.y) "
        "and `code`.\n\n- item one\n- item two\n\n> quoted\n\n---\n\n"
        "![diagram](img.png)\n"
    ).encode()
    assert parse_document(md, "README.md") == (
        "Title\n\nSome bold and italic text with a link and code.\n\n"
        "item one\n\nitem two\n\nquoted\n\ndiagram"
    )


def test_markdown_keeps_angle_bracket_placeholders_and_tables():
    md = b"Call `/datasets/<dataset_id>/documents` or /chats/<chat_id>.\n\n| Name | Default |\n|---|---|\n| port | 9380 |\n"
    assert parse_document(md, "api.md") == (
        "Call /datasets/<dataset_id>/documents or /chats/<chat_id>.\n\nName | Default\n\nport | 9380"
    )


def test_blank_text_file_has_no_text():
    with pytest.raises(ParseError, match="no text found in 'empty.txt'"):
        parse_document(b" \n\n \t", "empty.txt")


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_segments_chinese_and_drops_function_words():
    tokens = tokenize("北京是中国的首都")
    assert "北京" in tokens and "首都" in tokens
    assert "是" not in tokens and "的" not in tokens


def test_tokenizer_english_lowercase_stopwords_punctuation():
    assert tokenize("What is THE Return-Policy, for orders?") == ["return", "policy", "orders"]


def test_tokenizer_mixed_text_keeps_order():
    assert tokenize("iPhone 15 的退货政策") == ["iphone", "15", "退货", "政策"]


def test_tokenizer_is_thread_safe():
    expected = tokenize("中华人民共和国的首都是北京")
    results: list[list[str]] = []

    def work() -> None:
        results.append(tokenize("中华人民共和国的首都是北京"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8


def test_count_tokens_counts_words_and_cjk_characters():
    assert count_tokens("Hello, world 2024!") == 3
    assert count_tokens("北京是首都") == 5
    assert count_tokens("abc中文 x") == 4
    assert count_tokens("  ...  ") == 0


# --------------------------------------------------------------------------- chunker


def test_chunks_pack_paragraphs_within_budget_in_order():
    paragraphs = [" ".join(f"p{i}w{j}" for j in range(4)) for i in range(10)]
    chunks = chunk_text("\n\n".join(paragraphs), chunk_tokens=10)
    assert all(count_tokens(chunk) <= 10 for chunk in chunks)
    assert len(chunks) == 5  # two 4-word paragraphs fit, a third would not
    assert chunks[0] == paragraphs[0] + "\n\n" + paragraphs[1]
    assert "\n\n".join(chunks) == "\n\n".join(paragraphs)


def test_long_paragraph_split_on_sentences():
    text = "Alpha beta gamma. Delta epsilon zeta! Eta theta iota? Kappa lambda mu."
    chunks = chunk_text(text, chunk_tokens=6)
    assert chunks == ["Alpha beta gamma. Delta epsilon zeta!", "Eta theta iota? Kappa lambda mu."]


def test_long_sentence_split_hard_by_tokens():
    words = [f"w{i}" for i in range(23)]
    chunks = chunk_text(" ".join(words), chunk_tokens=10)
    assert [chunk.split() for chunk in chunks] == [words[:10], words[10:20], words[20:]]


def test_chinese_split_on_chinese_terminators():
    text = "退货需在三十天内申请。发票必须保留！运费由谁承担？请联系客服；谢谢。"
    chunks = chunk_text(text, chunk_tokens=12)
    assert all(count_tokens(chunk) <= 12 for chunk in chunks)
    assert all(chunk[-1] in "。！？；" for chunk in chunks)
    assert "".join(chunks) == text
    assert chunks[0] == "退货需在三十天内申请。"


def test_chinese_sentence_without_punctuation_split_hard():
    text = "一" * 25
    assert chunk_text(text, chunk_tokens=10) == ["一" * 10, "一" * 10, "一" * 5]


def test_chunker_no_empty_chunks_and_short_text_unchanged():
    assert chunk_text("") == []
    assert chunk_text("\n\n  \n\n") == []
    assert chunk_text("Just one line.") == ["Just one line."]


def test_chunker_rejects_non_positive_budget():
    with pytest.raises(ValueError):
        chunk_text("text", chunk_tokens=0)


# --------------------------------------------------------------------------- BM25

ENGLISH = {
    "returns": "Our return policy: you can return any purchase within 30 days for a refund.",
    "shipping": "Shipping usually takes five business days within the country.",
    "history": "The company was founded in 1999 and sells home appliances.",
    "warranty": "All appliances come with a two year warranty covering defects.",
}

CHINESE = {
    "tuihuo": "购买后30天内可以申请退货，退货时需要保留发票和原包装。",
    "yinsi": "我们的隐私政策说明了如何收集和使用您的个人数据。",
    "fahuo": "订单通常在三个工作日内发货，偏远地区可能需要更长时间。",
    "baoxiu": "所有家电提供两年保修服务，人为损坏除外。",
}


def test_english_question_ranks_answer_first():
    results = build_index(ENGLISH).search(tokenize("How many days do I have to return a purchase?"), 3)
    assert results[0][0] == "returns"
    assert results[0][1] >= 0.3  # clears the service's default similarity_threshold of 0.2
    assert all(0 < score <= 1 for _, score in results)
    assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)


def test_chinese_question_ranks_answer_first():
    results = build_index(CHINESE).search(tokenize("退货政策是什么？"), 3)
    scores = dict(results)
    assert results[0][0] == "tuihuo"
    # each holds one of the two equal-idf words (coverage 0.5 both); BM25 decides: 退货 occurs twice
    assert scores["tuihuo"] > scores["yinsi"]
    assert all(0 < score <= 1 for _, score in results)


def bm25_norm(index: BM25Index, query: list[str], chunk_id: str) -> float:
    """The normalised BM25 part of a similarity: raw bm25s score / Σ idf."""
    raw = index._retriever.get_scores_from_ids(index._retriever.get_tokens_ids(query))
    return min(1.0, float(raw[index._position[chunk_id]]) / sum(index.idf(t) for t in query))


def test_similarity_blends_coverage_and_bm25():
    index = build_index(ENGLISH)
    [(chunk_id, score)] = index.search(["warranty"], 5)
    assert chunk_id == "warranty"
    # full coverage, one occurrence: 0.5 · 1 + 0.5 · tf/(tf + k1·norm), below 1 but above 0.5
    norm = bm25_norm(index, ["warranty"], "warranty")
    assert 0 < norm < 1
    assert score == pytest.approx(0.5 + 0.5 * norm)
    assert 0.5 < score < 1


def test_partial_coverage_uses_idf_weights():
    index = build_index(ENGLISH)
    query = ["refund", "many", "days", "zebra"]  # "returns" has refund and days only
    [(chunk_id, score)] = [r for r in index.search(query, 5) if r[0] == "returns"]
    coverage = (index.idf("refund") + index.idf("days")) / sum(index.idf(t) for t in query)
    assert score == pytest.approx(0.5 * coverage + 0.5 * bm25_norm(index, query, "returns"))


def test_half_missing_terms_score_lower_than_full_match():
    index = build_index(ENGLISH)
    assert index.idf("refund") == pytest.approx(index.idf("warranty"))  # both df = 1
    [(_, full)] = index.search(["refund"], 5)
    half = dict(index.search(["refund", "warranty"], 5))["returns"]  # half the idf mass missing
    assert 0 < half < full
    assert half == pytest.approx(full / 2)  # coverage and BM25 both halve


def test_all_terms_once_beat_one_term_repeated():
    index = BM25Index(
        [
            ("repeats", ["refund"] * 6),
            ("covers", ["refund", "policy", "days", "filler", "filler", "filler"]),
            ("neither", ["unrelated"] * 6),
        ]
    )
    results = index.search(["refund", "policy", "days"], 5)
    assert [chunk_id for chunk_id, _ in results] == ["covers", "repeats"]


def test_ties_broken_by_chunk_id():
    index = BM25Index([("b", ["refund", "x"]), ("c", ["refund", "x"]), ("a", ["refund", "x"])])
    results = index.search(["refund"], 3)
    assert [chunk_id for chunk_id, _ in results] == ["a", "b", "c"]
    assert len({score for _, score in results}) == 1
    assert index.search(["refund"], 2) == results[:2]


def test_unmatched_query_words_lower_similarity():
    index = build_index(ENGLISH)
    [(_, plain)] = index.search(["refund"], 5)
    [(_, diluted)] = index.search(["refund", "zebra"], 5)
    assert 0 < diluted < plain
    # coverage and BM25 share the denominator Σ idf, so both scale by the same factor
    assert diluted == pytest.approx(plain * index.idf("refund") / (index.idf("refund") + index.idf("zebra")))


def test_repeated_query_token_counts_once():
    index = build_index(ENGLISH)
    assert index.search(["refund", "refund"], 5) == index.search(["refund"], 5)


def test_query_without_known_tokens_returns_nothing():
    index = build_index(ENGLISH)
    assert index.search(["zebra", "quokka"], 5) == []
    assert index.search([], 5) == []


def test_allowed_ids_filter_before_top_k():
    index = build_index(ENGLISH)
    query = tokenize("return within days")
    assert index.search(query, 1)[0][0] == "returns"
    assert index.search(query, 1, allowed_ids={"shipping", "history"}) == [
        ("shipping", pytest.approx(index.search(query, 5)[1][1]))
    ]
    assert index.search(query, 5, allowed_ids={"history", "unknown"}) == []


def test_top_k_limits_results():
    index = build_index(ENGLISH)
    assert len(index.search(tokenize("return days warranty appliances"), 2)) == 2
    assert index.search(tokenize("return"), 0) == []


def test_empty_corpus_and_tokenless_chunks():
    assert BM25Index([]).search(["anything"], 5) == []
    assert BM25Index([("a", []), ("b", [])]).search(["anything"], 5) == []


def test_duplicate_chunk_ids_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        BM25Index([("a", ["x"]), ("a", ["y"])])


def test_concurrent_searches_agree():
    index = build_index(ENGLISH)
    query = tokenize("return a purchase for a refund")
    expected = index.search(query, 3)
    results: list[list[tuple[str, float]]] = []

    def work() -> None:
        for _ in range(20):
            results.append(index.search(query, 3))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 160 and all(r == expected for r in results)


def test_end_to_end_parse_chunk_index():
    data = make_pdf(
        "Returns are accepted within 30 days.",
        "",
        "Shipping is free for orders over 50 dollars.",
    )
    text = parse_document(data, "faq.pdf")
    chunks = chunk_text(text, chunk_tokens=8)
    assert len(chunks) >= 2
    index = BM25Index([(f"c{i}", tokenize(chunk)) for i, chunk in enumerate(chunks)])
    best_id, _ = index.search(tokenize("free shipping"), 1)[0]
    assert "Shipping is free" in chunks[int(best_id[1:])]
