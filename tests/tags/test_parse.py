import pytest

from temarec.tags.backends.llm import InvalidOutput, extract_json, parse_scores, parse_vocab


def test_extract_json_tolerates_fences_prose_and_think_blocks():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('<think>hmm {"b": 2}</think>Here you go: {"a": 1} Hope it helps.') == {"a": 1}
    with pytest.raises(InvalidOutput, match="not valid JSON"):
        extract_json('{"a": 1')
    with pytest.raises(InvalidOutput, match="no JSON"):
        extract_json("I cannot help with that.")


def test_parse_vocab_validates_count_and_score_range():
    text = '{"tags": [{"tag": "Coffee", "score": 0.9}, {"tag": "tea", "score": 1}, {"tag": "snack", "score": 0}]}'
    assert parse_vocab(text, 2) == [("coffee", 0.9), ("tea", 1.0)]  # more than N: the first N
    assert parse_vocab('{"coffee": 0.5, "tea": 0.4}', 2) == [("coffee", 0.5), ("tea", 0.4)]
    with pytest.raises(InvalidOutput, match="2 distinct tags, 3"):
        parse_vocab('{"tags": [["tea", 0.5], ["Tea", 0.5], ["coffee", 0.2]]}', 3)
    with pytest.raises(InvalidOutput, match="outside"):
        parse_vocab('{"tags": [{"tag": "tea", "score": 7}]}', 1)


def test_parse_scores_requires_every_requested_tag_once_in_range():
    tags = ["coffee", "dark chocolate"]
    assert parse_scores('{"scores": {"Dark Chocolate": 12.5, "coffee": 80}}', tags) == [80, 13]
    assert parse_scores('{"scores": [{"tag": "coffee", "score": 1}, {"tag": "dark chocolate", "score": 100}]}',
                        tags) == [1, 100]
    with pytest.raises(InvalidOutput, match="not scored"):
        parse_scores('{"scores": {"coffee": 80}}', tags)
    with pytest.raises(InvalidOutput, match="outside the requested"):
        parse_scores('{"scores": {"coffee": 80, "dark chocolate": 3, "tea": 5}}', tags)
    with pytest.raises(InvalidOutput, match="outside 1-100"):
        parse_scores('{"scores": {"coffee": 0, "dark chocolate": 3}}', tags)
    with pytest.raises(InvalidOutput, match="not a number"):
        parse_scores('{"scores": {"coffee": "high", "dark chocolate": 3}}', tags)
