import json
import math

import pytest

from parity.report import json_text


def test_the_text_is_the_same_json_as_json_dumps_writes():
    value = {"schema": "x", "empty": {}, "none": [], "numbers": [1, 2.5, None],
             "checkpoints": [{"name": "embed", "metrics": {"rel_l2": 1e-7, "worst_index": [0, 3]}},
                             {"name": "logits", "metrics": None}],
             "nested": {"rows": [[1, 2], [3, 4]], "text": "é\n\""}}
    assert json.loads(json_text.dumps(value)) == value


def test_each_record_of_a_top_level_list_is_one_line():
    records = [{"name": f"layers.{i}.out", "metrics": {"rel_l2": i / 10}} for i in range(5)]
    lines = json_text.dumps({"schema": "x", "checkpoints": records}).splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    assert lines[1] == '  "schema": "x",'
    record_lines = [line for line in lines if '"name": "layers.' in line]
    assert len(record_lines) == 5 and all(line.startswith("    {") for line in record_lines)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_as_json_dumps_refuses_them(bad):
    with pytest.raises(ValueError):
        json_text.dumps({"checkpoints": [{"rel_l2": bad}]})


def test_an_iterator_is_written_record_by_record_as_the_same_text_as_a_list():
    records = [{"name": f"layers.{i}.out", "rel_l2": i / 10} for i in range(4)]
    value = {"schema": "x", "checkpoints": records, "empty": []}
    written: list[str] = []
    json_text.dump({"schema": "x", "checkpoints": iter(records), "empty": iter(())}, written.append)
    assert "".join(written) == json_text.dumps(value)
    assert len(written) > len(records)  # handed over a piece at a time, not as one string
