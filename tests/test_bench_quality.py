"""benchmarks/bench_quality.py measures the job's learner through its own replay of the per-entity
update: that replay must give exactly the Beam job's models and progressive scores."""

import json
import os
import random
import sys

import numpy as np
import pytest

from pipeline.simulation import ClickStream, StreamConfig
from transforms.models import load_models
from transforms.update import UpdateConfig

from jobutil import run_job

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_quality  # noqa: E402


def test_metrics_on_hand_computed_cases():
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    assert bench_quality.log_loss(np.zeros(4), labels) == pytest.approx(np.log(2))
    assert bench_quality.log_loss(np.array([2.0, -1.0, 0.0, 0.0]), labels) == pytest.approx(
        np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log(2), np.log(2)]))
    assert bench_quality.auc(np.array([3.0, 1.0, 2.0, 0.0]), labels) == 1.0
    assert bench_quality.auc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 0.25
    assert bench_quality.auc(np.zeros(4), labels) == 0.5


def test_minibatches_are_epoch_aligned_intervals_in_time_then_uid_order():
    from transforms.examples import Example
    ex = [Example("b", 1_250, "z", 1.0, 1.0, 0.0, ()), Example("a", 999, "y", 0.0, 1.0, 0.0, ()),
          Example("a", 1_000, "x", 1.0, 1.0, 0.0, ()), Example("a", 500, "w", 0.0, 1.0, 0.0, ()),
          Example("a", 500, "v", 1.0, 1.0, 0.0, ())]
    assert bench_quality.minibatches(ex, 1_000) == {"a": [(1_000, [4, 3, 1]), (2_000, [2])], "b": [(2_000, [0])]}


def test_replay_equals_the_beam_job(tmp_path):
    stream = ClickStream(StreamConfig(num_users=30, hours=1.0, impressions_per_user_hour=10.0, seed=21))
    records = list(stream.examples())
    initial = list(stream.initial_models())
    assert initial
    shuffled = records[:]
    random.Random(4).shuffle(shuffled)  # the job's result does not depend on the input order
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "examples.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in shuffled)
    with open(tmp_path / "in" / "models.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in initial)
    config = UpdateConfig(minibatch_seconds=600, max_minibatch_size=2, coordinate="per-user")
    run_job({"examples": str(tmp_path / "in" / "examples.jsonl"), "models": str(tmp_path / "in" / "models.jsonl")},
            tmp_path / "out", "--max-minibatch-size", "2", "--coordinate", "per-user", minibatch_seconds=600)

    parsed = bench_quality.make_stream("test", stream.config, config.penalty)
    ours = bench_quality.replay(parsed.examples, parsed.initial_models, config)
    assert ours.failures == 0 and ours.updates > len(ours.models)
    job, _ = load_models(str(tmp_path / "out" / "random-effect" / "per-user"), config.penalty)
    assert set(job) == set(ours.models) | set(parsed.initial_models)
    for entity, model in ours.models.items():
        theirs = dict(zip(job[entity].feature_names, zip(job[entity].means, job[entity].precisions)))
        assert set(theirs) == set(model.feature_names)
        for nt, mean, precision in zip(model.feature_names, model.means, model.precisions):
            assert theirs[nt][0] == pytest.approx(mean, rel=1e-12, abs=1e-12)
            assert theirs[nt][1] == pytest.approx(precision, rel=1e-12)
    summary = json.load(open(tmp_path / "out" / "summary.json"))["progressive_validation"]["overall"]
    labels = bench_quality.labels_of(parsed)
    assert summary["log_loss_with_random_effects"] == pytest.approx(bench_quality.log_loss(ours.margins, labels),
                                                                    rel=1e-12)


def _small_stream():
    stream = ClickStream(StreamConfig(num_users=60, hours=1.0, impressions_per_user_hour=8.0, seed=3))
    from transforms.examples import ExampleParser
    parser = ExampleParser(entity_field="userId", timestamp_field="timestamp")
    return [parser.parse(record) for record in stream.examples()]


def test_interval_by_interval_replay_without_cross_entity_terms_is_the_replay():
    # bench_quality.replay runs interval by interval across entities, for the prototypes of
    # cross-entity learning; without them that must be exactly each entity's updates in turn.
    from transforms.update import train_minibatch
    examples = _small_stream()
    config = UpdateConfig(global_correction="none")
    margins, failures = np.full(len(examples), np.nan), 0
    for entity, batches in sorted(bench_quality.minibatches(examples, 60_000).items()):
        model = None
        for end, positions in batches:
            result = train_minibatch(model, entity, [examples[i] for i in positions], end, config)
            margins[positions] = result.model_scores
            if result.failure is None:
                model = result.model
            else:
                failures += 1
    expected = bench_quality.replay(examples, {}, config)
    assert failures == expected.failures == 0
    assert margins.tolist() == expected.margins.tolist()
    # The global coordinate changes the scores, from the second interval on only.
    with_global = bench_quality.replay(examples, {}, config, global_coordinate="independent").margins
    first_end = min(end for batches in bench_quality.minibatches(examples, 60_000).values() for end, _ in batches)
    first = [i for i, ex in enumerate(examples) if ex.timestamp_ms < first_end]
    assert first and with_global[first].tolist() == margins[first].tolist()
    assert not np.array_equal(with_global, margins)


@pytest.mark.parametrize("variant", ["population", "independent", "residual"])
def test_cross_entity_prototypes_never_look_ahead(variant):
    # Change every label of one interval: no score of that interval or before may move, since no
    # mini-batch may see anything of its own interval or later; later scores must move.
    import quality_experiments as qe
    examples = _small_stream()
    config = UpdateConfig(global_correction="none")  # each variant on its own
    ends = sorted({end for batches in bench_quality.minibatches(examples, 60_000).values() for end, _ in batches})
    cut = ends[len(ends) // 2]
    flipped = [ex._replace(label=1.0 - ex.label) if cut - 60_000 <= ex.timestamp_ms < cut else ex for ex in examples]

    def margins(stream):
        if variant == "population":
            return bench_quality.replay(stream, {}, config, population=qe.OnlinePopulation(min_count=1)).margins
        return bench_quality.replay(stream, {}, config, global_coordinate=variant).margins

    before, after = margins(examples), margins(flipped)
    upto = np.array([ex.timestamp_ms < cut for ex in examples])
    assert upto.any() and (~upto).any()
    assert before[upto].tolist() == after[upto].tolist()
    assert not np.array_equal(before[~upto], after[~upto])


def test_online_population_cold_model_uses_the_total_variance_of_each_coefficient():
    import quality_experiments as qe
    from transforms.models import INTERCEPT, RandomEffectModel
    population = qe.OnlinePopulation(min_count=2)
    f = ("ad_format", "video")
    population.fold("a", RandomEffectModel("a", (INTERCEPT, f), np.array([1.0, 2.0]), np.array([4.0, 2.0])))
    population.fold("b", RandomEffectModel("b", (INTERCEPT,), np.array([3.0]), np.array([4.0])))
    cold = population.cold_model("c")
    assert cold.feature_names == (INTERCEPT,)  # one model only has f: below min_count
    # means 1 and 3: mean 2, their variance 1, plus the mean variance 1/4
    assert cold.means.tolist() == [2.0] and cold.precisions.tolist() == [1.0 / 1.25]
    # A model folded again replaces its earlier contribution.
    population.fold("b", RandomEffectModel("b", (INTERCEPT, f), np.array([1.0, 4.0]), np.array([4.0, 2.0])))
    cold = population.cold_model("c")
    assert cold.feature_names == (INTERCEPT, f)
    assert cold.means.tolist() == [1.0, 3.0] and cold.precisions.tolist() == [4.0, 1.0 / 1.5]
    # Only the means learned: the penalty as precision.
    only_means = qe.OnlinePopulation(min_count=2, precision="penalty")
    for entity in ("a", "b"):
        only_means.fold(entity, RandomEffectModel(entity, (INTERCEPT,), np.array([2.0]), np.array([4.0])))
    cold = only_means.cold_model("c", penalty=3.0)
    assert cold.means.tolist() == [2.0] and cold.precisions.tolist() == [3.0]
