"""``distrec predict`` on LLM runs: train/serve parity, histories as of a time, bad rows, atomic output.

Truth: the run's own test predictions (written by the training workers under DeepSpeed ZeRO-3),
the prepared samples built by ``distrec data prepare`` (for the histories), and the rows the
test itself corrupts. Real Ray Data actors, real tiny runs trained by ``run_job``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from distrec.cli import app
from distrec.config import load_job_config
from distrec.config_loader import to_dict
from distrec.data import storage
from distrec.errors import ConfigError, DataError
from distrec.eval.environment import run_environment
from distrec.predict.driver import predict
from distrec.predict.history import InteractionLog
from distrec.predict.pipeline import MANIFEST, PredictOptions
from distrec.train.artefacts import ensure_prepared
from distrec.train.launcher import run_job

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[1]
# fp32 on both sides; the rows are batched as the run's evaluation batched them.
PARITY_ATOL = 1e-5


@pytest.fixture(scope="module")
def ctr_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-ctr")
    job = load_job_config(REPO / "jobs" / "tiny.yaml", [f"ray.storage_path={root}", "ray.run_name=ctr"])
    return job, run_job(job).run_dir


@pytest.fixture(scope="module")
def test_rows(ctr_run, tmp_path_factory) -> tuple[Path, pa.Table]:
    """The run's test split as a user would send it: ``sample_id`` (an id column of theirs), ``user_id, item_id, timestamp``."""
    job, _ = ctr_run
    table = storage.open_split(ensure_prepared(job), "test")
    path = tmp_path_factory.mktemp("predict-in") / "rows.parquet"
    pq.write_table(table.select(["sample_id", "user_id", "item_id", "timestamp"]), path)
    return path, table


@pytest.mark.parametrize("task,cap", [("ctr", None), ("ctr", 7), ("generative", 10)])
def test_histories_as_of_each_rows_time_equal_the_prepared_samples(task, cap, tmp_path):
    """The interaction log + (timestamp, item) rule rebuilds every prepared sample's history."""
    job = load_job_config(REPO / "jobs" / ("tiny.yaml" if task == "ctr" else "tiny_cft.yaml"),
                          [f"data.max_history_stored={cap if cap is not None else 'null'}"] if task == "ctr" else [])
    folder = ensure_prepared(job)
    log = InteractionLog(storage.open_table(folder, "interactions"))
    for split in ("train", "test"):
        samples = storage.open_split(folder, split).to_pylist()
        for s in samples:
            found = log.history(s["user_id"], s["timestamp"], s["item_id"], cap)
            assert found.item_ids.tolist() == s["history_item_ids"], (split, s["sample_id"])
            if task == "ctr":
                assert found.ratings.tolist() == pytest.approx(s["history_ratings"])
    assert log.history(10**9) is None


def test_ctr_predictions_equal_the_runs_own_test_predictions(ctr_run, test_rows, tmp_path):
    job, run = ctr_run
    path, _ = test_rows
    result = predict(str(run), str(path), str(tmp_path / "out"),
                     PredictOptions(actors=2, chunk_rows=8, progress=False))
    got = pq.read_table(tmp_path / "out").to_pandas()
    want = pq.read_table(run / "predictions_test.parquet").to_pandas()
    assert list(got.sample_id) == list(pq.read_table(path).column("sample_id").to_pylist())  # input order kept
    merged = got.merge(want, on="sample_id", suffixes=("", "_run"))
    assert len(merged) == len(want) == 32
    np.testing.assert_allclose(merged.p_yes, merged.p_yes_run, atol=PARITY_ATOL)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == 32 and manifest["bad_rows"] == 0
    assert [f["rows"] for f in manifest["files"]] == [8, 8, 8, 8]
    for f in manifest["files"]:
        assert storage.sha256_file(tmp_path / "out" / f["path"]) == f["sha256"]
    assert result.summary().startswith("predicted 32 of 32 rows (ctr)")


def test_explicit_histories_score_as_the_log_does(ctr_run, test_rows, tmp_path):
    """Rows carrying their own history_item_ids/ratings (no timestamp) get the log's scores."""
    _, run = ctr_run
    _, table = test_rows
    path = tmp_path / "explicit.arrow"
    explicit = table.select(["sample_id", "user_id", "item_id", "history_item_ids", "history_ratings"]).slice(0, 8)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, explicit.schema) as writer:
        writer.write_table(explicit)
    predict(str(run), str(path), str(tmp_path / "out"), PredictOptions(progress=False))
    got = pq.read_table(tmp_path / "out").to_pandas().merge(
        pq.read_table(run / "predictions_test.parquet").to_pandas(), on="sample_id", suffixes=("", "_run"))
    assert len(got) == 8
    np.testing.assert_allclose(got.p_yes, got.p_yes_run, atol=PARITY_ATOL)


def _bad_input(test_rows, tmp_path) -> Path:
    path, table = test_rows
    first_ts = int(pq.read_table(path).column("timestamp")[0].as_py())
    rows = pq.read_table(path).to_pylist()[:6]
    rows[1]["user_id"] = 10**9  # unknown user
    rows[2]["item_id"] = 10**9  # not in the catalogue
    rows[3]["timestamp"] = 0  # before the user's first interaction: empty history
    rows[4]["user_id"] = None
    assert first_ts > 0
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_table(path).schema), bad)
    return bad


def test_a_bad_row_is_named_and_nothing_is_written(ctr_run, test_rows, tmp_path):
    _, run = ctr_run
    bad = _bad_input(test_rows, tmp_path)
    with pytest.raises(DataError) as err:
        predict(str(run), str(bad), str(tmp_path / "out"), PredictOptions(progress=False))
    message = str(err.value)
    assert f"{bad}, row 1: user_id 1000000000 has no interactions" in message and "3 more bad rows" in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_skip_scores_the_good_rows_and_counts_the_bad(ctr_run, test_rows, tmp_path):
    _, run = ctr_run
    bad = _bad_input(test_rows, tmp_path)
    result = predict(str(run), str(bad), str(tmp_path / "out"), PredictOptions(on_bad_row="skip", progress=False))
    got = pq.read_table(tmp_path / "out").to_pandas()
    want = pq.read_table(run / "predictions_test.parquet").to_pandas().set_index("sample_id")
    rows = pq.read_table(bad).to_pylist()
    assert list(got.sample_id) == [rows[0]["sample_id"], rows[5]["sample_id"]]
    np.testing.assert_allclose(got.p_yes, want.loc[got.sample_id, "p_yes"], atol=PARITY_ATOL)
    m = result.manifest
    assert (m["rows_in"], m["rows_out"], m["bad_rows"]) == (6, 2, 4)
    reasons = {b["row"]: b["reason"] for b in m["bad_examples"]}
    assert "not in the run's catalogue" in reasons[2] and "empty history before timestamp 0" in reasons[3]
    assert "user_id is empty" in reasons[4]


def test_input_errors_are_named_before_any_work(ctr_run, test_rows, tmp_path):
    _, run = ctr_run
    path, _ = test_rows
    no_item = tmp_path / "no_item.parquet"
    pq.write_table(pq.read_table(path).drop(["item_id"]), no_item)
    with pytest.raises(DataError, match=r"missing column\(s\) \['item_id'\]"):
        predict(str(run), str(no_item), str(tmp_path / "a"), PredictOptions(progress=False))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="truncated.parquet: unreadable parquet file"):
        predict(str(run), str(truncated), str(tmp_path / "b"), PredictOptions(progress=False))
    (tmp_path / "c").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        predict(str(run), str(path), str(tmp_path / "c"), PredictOptions(progress=False))
    with pytest.raises(ConfigError, match="neither an LLM run"):
        predict(str(tmp_path), str(path), str(tmp_path / "d"), PredictOptions(progress=False))


def test_cli_prints_the_summary(ctr_run, test_rows, tmp_path):
    _, run = ctr_run
    path, _ = test_rows
    out = CliRunner().invoke(app, ["predict", "--run", str(run), "--input", str(path), "--out", str(tmp_path / "o"),
                                   "--chunk-rows", "16"])
    assert out.exit_code == 0, out.output
    assert "predicted 32 of 32 rows (ctr)" in out.output and "2 shards, 0 bad rows skipped" in out.output
    out = CliRunner().invoke(app, ["predict", "--run", str(run), "--input", str(path), "--out", str(tmp_path / "p"),
                                   "--on-bad-row", "ignore"])
    assert out.exit_code == 2 and "--on-bad-row must be 'error' or 'skip'" in out.output


def test_share_prefix_scores_as_the_plain_run_did(ctr_run, test_rows, tmp_path):
    """``--share-prefix`` on a run trained without it: each batch's common prompt prefix runs once
    (no dropout at inference, so only float rounding separates it from the run's own scores)."""
    _, run = ctr_run
    path, _ = test_rows
    out = CliRunner().invoke(app, ["predict", "--run", str(run), "--input", str(path), "--out", str(tmp_path / "o"),
                                   "--share-prefix"])
    assert out.exit_code == 0, out.output
    merged = pq.read_table(tmp_path / "o").to_pandas().merge(
        pq.read_table(run / "predictions_test.parquet").to_pandas(), on="sample_id", suffixes=("", "_run"))
    assert len(merged) == 32
    np.testing.assert_allclose(merged.p_yes, merged.p_yes_run, atol=PARITY_ATOL)
    config_hash = lambda *overrides: run_environment(to_dict(load_job_config(run / "config_train.yaml", list(overrides))))["config_hash"]  # noqa: E731
    # the actors built the job with the prefix shared, not the run's own
    assert json.loads((tmp_path / "o" / MANIFEST).read_text())["config_hash"] == config_hash("train.share_prefix=true")
    assert config_hash("train.share_prefix=true") != config_hash()


def test_generative_top_k_equals_the_runs_own_test_rankings(ray_local, tmp_path):
    job = load_job_config(REPO / "jobs" / "tiny_cft.yaml",
                          [f"ray.storage_path={tmp_path}", "ray.run_name=gen", "eval.generate=true",
                           "eval.num_beams=2", "eval.max_new_tokens=8", "train.max_steps=4"])
    run = run_job(job).run_dir
    rows = storage.open_split(ensure_prepared(job), "test").select(["sample_id", "user_id", "item_id", "timestamp"])
    pq.write_table(rows, tmp_path / "rows.parquet")
    predict(str(run), str(tmp_path / "rows.parquet"), str(tmp_path / "out"), PredictOptions(progress=False))
    got = pq.read_table(tmp_path / "out").to_pandas().set_index("sample_id")
    want = pq.read_table(run / "predictions_test.parquet").to_pandas().set_index("sample_id")
    assert sorted(got.index) == sorted(want.index) and len(got) == 16
    named = 0
    for sample_id, row in want.iterrows():
        assert list(got.loc[sample_id, "top_item_ids"]) == list(row.top_item_ids), sample_id
        scores = np.asarray(got.loc[sample_id, "top_scores"])
        assert len(scores) == len(row.top_item_ids) and np.all(scores <= 0)
        named += bool(len(row.top_item_ids))
    assert named >= 4, "too few rows named a title for the comparison to mean anything"


def test_input_and_output_on_object_storage(ctr_run, test_rows, tmp_path):
    """Rows read from and scores written to a real S3 server (moto on 127.0.0.1), read back by boto3."""
    import io

    from s3_server import boto3_client, get, keys, s3_bucket

    _, run = ctr_run
    path, _ = test_rows
    with s3_bucket("predict") as bucket:
        boto3_client().put_object(Bucket="predict", Key="in/rows.parquet", Body=path.read_bytes())
        result = predict(str(run), f"{bucket}/in", f"{bucket}/out/scored",
                         PredictOptions(actors=2, chunk_rows=16, progress=False))
        listed = keys("predict", "out/scored")
        assert listed == ["out/scored/_manifest.json", "out/scored/part-00000.parquet", "out/scored/part-00001.parquet"]
        got = pa.concat_tables([pq.read_table(io.BytesIO(get("predict", k))) for k in listed[1:]]).to_pandas()
        assert json.loads(get("predict", "out/scored/_manifest.json"))["rows_out"] == 32 == result.manifest["rows_out"]
        with pytest.raises(ConfigError, match="already exists"):
            predict(str(run), f"{bucket}/in", f"{bucket}/out/scored", PredictOptions(progress=False))
        bad = _bad_input(test_rows, tmp_path)
        boto3_client().put_object(Bucket="predict", Key="bad/rows.parquet", Body=bad.read_bytes())
        with pytest.raises(DataError, match="row 1"):
            predict(str(run), f"{bucket}/bad", f"{bucket}/out/failed", PredictOptions(progress=False))
        assert keys("predict", "out/failed") == []  # its shards were removed, no manifest published
    want = pq.read_table(run / "predictions_test.parquet").to_pandas()
    merged = got.merge(want, on="sample_id", suffixes=("", "_run"))
    assert len(merged) == 32
    np.testing.assert_allclose(merged.p_yes, merged.p_yes_run, atol=PARITY_ATOL)



def test_arrow_timestamps_mean_the_same_seconds(tmp_path):
    """A ``timestamp`` column of Arrow type timestamp[ms, UTC] builds the samples unix seconds build."""
    import pyarrow.compute as pc

    from distrec.predict.samples import SampleRules, build_samples

    job = load_job_config(REPO / "jobs" / "tiny.yaml")
    folder = ensure_prepared(job)
    test = storage.open_split(folder, "test").slice(0, 8)
    rules = SampleRules.from_tables("ctr", job.data.max_history_stored, storage.open_table(folder, "items"),
                                    storage.open_table(folder, "users"))
    log = InteractionLog(storage.open_table(folder, "interactions"))
    rows = test.select(["user_id", "item_id", "timestamp"])
    as_time = rows.set_column(2, "timestamp", pc.multiply(rows.column("timestamp"), 1000).cast(pa.timestamp("ms", tz="UTC")))
    seconds, kept, bad = build_samples(rows, log, rules)
    timed, kept_t, bad_t = build_samples(as_time, log, rules)
    assert bad == bad_t == [] and kept.tolist() == kept_t.tolist() == list(range(8))
    assert timed.drop(["rating"]).equals(seconds.drop(["rating"]))  # rating: NaN (unknown) in both
    assert timed.column("history_item_ids").to_pylist() == test.column("history_item_ids").to_pylist()
