"""A job cut into pieces (issue 20, item 5): every task evaluated piece by piece (layer groups,
one layer's seed groups, and for few-shot segmentation parts of the query images, as
patchlens.plan.job_pieces cuts them) and gathered gives the same files, byte for byte, as the
one job over every layer and seed (scripts/evaluate.py's two paths: evaluate_all, and
evaluate_piece + gather_pieces)."""
import pandas as pd
import pytest

from patchlens.config import task_spec
from patchlens.evaluate import evaluate_all, evaluate_piece, gather_pieces
from helpers.three_layers import three_layer_study
from patchlens.plan import job_resources, parse_piece
from patchlens.plan.splits import job_pieces, piece_name

SCENES = {"seed": 0, "image_size": 64, "patch_align": 16, "rotation": 0, "n_train": 12,
          "n_val": 6, "n_gallery": 8, "n_identities": 8, "n_videos": 2, "n_frames": 4,
          "n_pairs": 4, "n_keypoints": 4, "n_shots_max": 2}
# two seeds where the task has seeds, so that a layer can be cut into seed pieces
PARAMS = {"fewshot_seg": {"seeds": [0, 1], "n_shots": 2, "linear_iters": 5},
          "hummingbird": {"seeds": [0, 1], "memory_size": 200},
          "depth": {"seeds": [0, 1], "head": "log_regression"},
          "lowshot_cls": {"seeds": [0, 1], "n_shots": [1, 2]},
          "instance_id": {}, "retrieval": {}, "tracking": {}, "keypoints": {}}
VARIANTS = {"fewshot_seg": ["raw", "drop1", "zscore"], "lowshot_cls": ["raw", "drop1"]}
BOOT = {"n_boot": 40, "level": 0.9, "seed": 3}
LABELS = {"model": "m", "dataset": "scenes"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Scenes + a 3-layer feature file (oracle, oracle + noise, noise) + channel statistics."""
    return three_layer_study(tmp_path_factory.mktemp("pieces"), SCENES)[:3]


def pieces_of(task: str, n_seeds: int, by: str) -> list[str]:
    """The pieces job_pieces cuts a 3-layer job of this task into, at a limit that makes it cut
    by layers (two groups), by seeds (every layer and seed alone) or by query images (every
    layer and seed in three parts)."""
    row = {"rule": task, "model": "m", "dataset": "d", "threads": 1, "flop": 3 * 2 * 4e13,
           "bytes_read": 0.0, "bytes_written": 0.0, "mem_bytes": 0.0, "n_layers": 3,
           "n_seeds": n_seeds}
    result = {"jobs": [row]}
    whole = job_resources(result, task, "m", "d")["runtime"]
    limit = {"layers": whole * 2 // 3, "seeds": whole // (3 * n_seeds) + 1,
             "query": whole // (9 * n_seeds) + 1}[by]
    return [piece_name(*p) for p in job_pieces(result, task, "m", "d", limit)]


def test_job_splits_cuts_seeds_only_where_rows_come_seed_after_seed():
    assert pieces_of("fewshot_seg", 2, "layers") == ["l0-1", "l2-2"]
    assert pieces_of("fewshot_seg", 2, "seeds") == [f"l{i}-{i}_s{s}-{s}" for i in range(3)
                                                    for s in range(2)]
    # lowshot_cls loops its features outside the seeds: single layers are its smallest pieces
    assert not task_spec("lowshot_cls").seed_pieces
    assert pieces_of("lowshot_cls", 2, "seeds") == ["l0-0", "l1-1", "l2-2"]
    # where one layer and one seed is still too long: parts of the query images, if the task
    # can merge them (few-shot segmentation's per-image confusion matrices add up)
    assert pieces_of("fewshot_seg", 2, "query") == [f"l{i}-{i}_s{s}-{s}_q{q}of3" for i in range(3)
                                                    for s in range(2) for q in range(3)]
    assert task_spec("hummingbird").query_pieces is None
    assert pieces_of("hummingbird", 2, "query") == pieces_of("hummingbird", 2, "seeds")
    for name in ("l5-7", "l4-4_s1-2", "l0-0_s1-1_q2of3", "l3-3_q0of2"):
        assert piece_name(*parse_piece(name)) == name
    assert parse_piece("l4-4_s1-2") == ([4], [1, 2], None)
    assert parse_piece("l0-0_s1-1_q2of3") == ([0], [1], (2, 3))
    for bad in ("l1", "l0-0_q3of3", "l0-0_s1"):
        with pytest.raises(ValueError):
            parse_piece(bad)


def test_a_query_part_pays_the_probe_fit_and_its_share_of_the_rest():
    from patchlens.plan.splits import piece_row

    row = {"rule": "fewshot_seg", "model": "m", "dataset": "d", "flop": 1200.0,
           "probe_flop": 240.0, "sim_flop": 960.0, "select": 60.0, "pixels": 30.0,
           "bytes_read": 100.0, "bytes_written": 0.0, "n_layers": 4, "n_seeds": 3}
    part = piece_row(row, 1, 1, parts=5)  # one layer of 4, one seed of 3: 1/12, then 1/5
    assert part["probe_flop"] == pytest.approx(240 / 12)  # the fit on the support, whole
    assert part["flop"] == pytest.approx(960 / 12 / 5 + 240 / 12)
    assert part["sim_flop"] == pytest.approx(960 / 60) and part["select"] == pytest.approx(1.0)
    assert part["bytes_read"] == pytest.approx(25.0)  # its layer, read whole


@pytest.mark.parametrize("task,by", [(t, "layers") for t in PARAMS]
                         + [(t, "seeds") for t in PARAMS if "seeds" in PARAMS[t]]
                         + [("fewshot_seg", "query")])
def test_gathered_pieces_equal_the_whole_job(study, tmp_path, task, by):
    ds, feats, stats = study
    spec = task_spec(task)
    params = {**spec.defaults, **PARAMS[task]}
    n_seeds = len(params.get("seeds") or [0])
    variants = VARIANTS.get(task, ["raw"])

    def outs(d, ext):
        (tmp_path / d).mkdir(exist_ok=True)
        return {v: tmp_path / d / f"{v}.{ext}" for v in variants}

    evaluate_all(task, params, feats, ds.root, outs("whole", "csv"), stats, LABELS,
                 outs("whole_units", "parquet"), BOOT)
    pieces = pieces_of(task, n_seeds, by)
    assert len(pieces) > 1
    scores, units = {v: [] for v in variants}, {v: [] for v in variants}
    blocks = []  # the (layers, seeds) cell of each query part (scripts/evaluate.py, blocks)
    for name in pieces:
        layers, seeds, query = parse_piece(name)
        s, u = outs(f"{name}_scores", "parquet"), outs(f"{name}_units", "parquet")
        evaluate_piece(task, params, feats, ds.root, s, u, layers, seeds, stats, LABELS,
                       query=query)
        for v in variants:
            scores[v].append(s[v])
            units[v].append(u[v])
        blocks.append(None if query is None else (tuple(layers), tuple(seeds or ())))
    gather_pieces(task, scores, units, outs("gathered", "csv"), outs("gathered_units", "parquet"),
                  LABELS, BOOT, blocks)
    for v in variants:
        whole, gathered = (tmp_path / d / f"{v}.csv" for d in ("whole", "gathered"))
        assert gathered.read_text() == whole.read_text(), f"{task}/{v}: scores differ"
        a, b = (pd.read_parquet(tmp_path / d / f"{v}.parquet")
                for d in ("whole_units", "gathered_units"))
        pd.testing.assert_frame_equal(b, a, check_exact=True)
    table = pd.read_csv(tmp_path / "whole" / f"{variants[0]}.csv")
    assert sorted(table["layer"].unique()) == [0, 1, 2]
    if "seed" in table and n_seeds > 1:
        assert sorted(table["seed"].unique()) == params["seeds"]
