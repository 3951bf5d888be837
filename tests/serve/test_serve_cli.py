"""`temarec recommend`: a table naming model, data and tag source, or JSON; errors are one clear line."""

from __future__ import annotations

import json

import pytest

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


def test_recommend_says_when_the_history_holds_every_item_of_the_domain(trained_run, recommender, capsys):
    kitchen = recommender("sasrec").item_ids("Kitchen")
    assert main(["recommend", "--run", str(trained_run("sasrec")), "--history", ",".join(kitchen),
                 "--domain", "Kitchen", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "nothing left to recommend" in out and "fallback" not in out
    assert not [line for line in out.splitlines() if line.strip()[:1].isdigit()]


def test_serve_refuses_a_port_outside_1_to_65535_in_one_line(capsys):
    for port in ("99999", "0", "http"):
        with pytest.raises(SystemExit) as stop:
            main(["serve", "--run", "no-such-run", "--port", port])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "argument --port" in err and "Traceback" not in err
