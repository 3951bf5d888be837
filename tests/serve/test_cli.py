"""`temarec recommend`: a table naming model, data and tag source, or JSON; errors are one clear line."""

from __future__ import annotations

import json

from temarec.cli import main


def test_recommend_prints_a_table_naming_model_data_and_tags(trained_run, capsys):
    assert main(["recommend", "--run", str(trained_run("tema")), "--history", "F02001,K02003,nope",
                 "--domain", "Kitchen", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "model: tema" in out and "served-world" in out and "genre names (test vocabulary)" in out
    assert "unknown ids skipped: nope" in out and "tags:" in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3 and all(" K" in row for row in rows)


def test_recommend_json_and_popularity_fallback(trained_run, capsys):
    assert main(["recommend", "--run", str(trained_run("pop")), "--domain", "Food", "-k", "2", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["model"] == "pop" and body["fallback"] == "popularity" and len(body["items"]) == 2


def test_recommend_errors_name_the_problem(trained_run, capsys):
    run = str(trained_run("pop"))
    assert main(["recommend", "--run", run, "--domain", "Garden"]) == 2
    assert "unknown domain 'Garden'" in capsys.readouterr().err
    assert main(["recommend", "--run", run, "--domain", "Food", "--history", "x", "--strict"]) == 2
    assert "unknown item id" in capsys.readouterr().err
