"""Tables a rule wrote carry their SHA-256 beside them and every consumer verifies it (issue 18
item 4): one changed digit in a scores CSV, or one flipped byte in a units or scores parquet, is a
DataError naming the file, never a different number."""
import numpy as np
import pandas as pd
import pytest

from patchlens.errors import DataError
from patchlens.io import checksum_path, read_table, sha256sum, write_csv, write_parquet
from patchlens.report import tables as T
from patchlens.stats.paired import LABELS, read_units
from patchlens.stats.units import UNIT_COLUMNS
from test_report_tables import MODELS, score_rows


def test_checksum_is_recorded_beside_the_table_in_sha256sum_format(tmp_path):
    df = pd.DataFrame({"a": [1.5, 2.25], "b": ["x", "y"]})
    for name, write in (("t.csv", write_csv), ("t.parquet", write_parquet)):
        write(df, tmp_path / name)
        digest, fname = checksum_path(tmp_path / name).read_text().split()
        assert (digest, fname) == (sha256sum(tmp_path / name), name)
        pd.testing.assert_frame_equal(read_table(tmp_path / name), df)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "t.csv", "t.csv.sha256", "t.parquet", "t.parquet.sha256"]  # no temporaries


def test_one_changed_digit_in_a_scores_csv_is_refused(tmp_path):
    path = tmp_path / "scores" / "a.csv"
    path.parent.mkdir()
    write_csv(score_rows("fewshot_seg", "dino"), path)  # as the evaluator writes it
    T.collect_scores([path], MODELS)
    text = path.read_text()
    i = text.index("0.", text.index("\n") + 1) + 2  # a digit of the first value
    changed = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
    path.write_text(changed)
    # unverified, the file would read as different numbers without any error
    assert not pd.read_csv(path)["value"].equals(score_rows("fewshot_seg", "dino")["value"])
    with pytest.raises(DataError, match=rf"{path}: its content does not match the SHA-256 "
                                        r"recorded in a.csv.sha256 .*rerun the rule"):
        T.collect_scores([path], MODELS)


def _units(n=40):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({c: rng.integers(0, 9, n) for c in UNIT_COLUMNS})
    df["metric"], df["kind"] = "map", "ratio"
    df["num"], df["den"] = rng.random(n), 1.0
    return df.assign(task="retrieval", model="m", dataset="d", variant="raw")[
        LABELS + UNIT_COLUMNS]


def test_every_flipped_byte_in_a_units_parquet_is_refused(tmp_path):
    path = tmp_path / "raw.parquet"
    write_parquet(_units(), path)
    clean = path.read_bytes()
    assert len(read_units([path])) == 1
    for pos in np.linspace(0, len(clean) - 1, 100).astype(int):  # 100 single-byte flips
        flipped = bytearray(clean)
        flipped[pos] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(DataError, match=str(path)):
            read_units([path])


def test_flipped_byte_in_scores_parquet_is_refused_by_the_best_layer_reader(tmp_path):
    from patchlens.analysis.best_layer import best_layer_table

    csv = tmp_path / "a.csv"
    write_csv(score_rows("fewshot_seg", "dino"), csv)
    out = tmp_path / "tables" / "scores.parquet"
    T.write_scores([csv], MODELS, out)
    best_layer_table(read_table(out))  # what scripts/best_layer.py runs
    data = bytearray(out.read_bytes())
    data[len(data) // 3] ^= 0x10
    out.write_bytes(bytes(data))
    with pytest.raises(DataError, match=str(out)):
        read_table(out)


def test_tables_without_a_record_are_read_and_broken_parquet_names_the_file(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    df.to_csv(tmp_path / "hand.csv", index=False)  # written by hand: nothing to verify
    pd.testing.assert_frame_equal(read_table(tmp_path / "hand.csv"), df)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable parquet file"):
        read_table(tmp_path / "bad.parquet")
