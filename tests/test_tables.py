"""The one markdown table writer: cells, missing figures, alignment, declared columns."""

from edge_se.tables import Column, fmt, markdown_table, table


def test_cells_say_missing_and_booleans_in_words():
    assert [fmt(None), fmt(True), fmt(False), fmt(0.123456), fmt(3, ".1f"), fmt("x")] == \
        ["-", "yes", "no", "0.123", "3.0", "x"]


def test_declared_columns_give_one_row_per_record_and_keep_numbers_as_written():
    cols = (Column("model", "model"), Column("p50 ms", "p50_ms", ".2f", align="right"),
            Column("twice", lambda r: r["p50_ms"] * 2 if r.get("p50_ms") else None))
    text = table(cols, [{"model": "a", "p50_ms": 1.234}, {"model": "b"}])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].split("|")[1].strip() == "model"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert cells == [["a", "1.23", "2.47"], ["b", "-", "-"]]
    assert lines[2].index("1.23") > lines[0].index("p50 ms"), "a right-aligned column ends under its header"


def test_numbers_that_look_like_text_are_not_reparsed():
    # tabulate would turn "1e3" into 1000 and drop trailing zeros without disable_numparse.
    assert "| 1e3 " in markdown_table(["x"], [["1e3"]]) and "10.20" in markdown_table(["x"], [["10.20"]])
