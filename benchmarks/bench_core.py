"""Core speed: lambda_core against lambda-learner 0.1.0, measured in the same process.

For each shape (n examples, d features, nonzeros per row) it times, as the median of repeats,
(a) ``train()`` alone on the same IndexedDataset and (b) the tutorial's whole NTV cycle
(IndexMap -> both conversions -> train -> back to NTV), sequential Bayesian logistic, DIAGONAL
Hessian, penalty 10, delta 0.8. It prints per-shape and geometric-mean speed-ups and checks that
our loss (judged by the reference's own ``loss()``) is never worse.

    python benchmarks/bench_core.py [--repeats N]
"""

import argparse
import gc
import statistics
import sys
import time

import numpy as np
from scipy import sparse

import lambda_core as lc

try:
    from linkedin.learner.ds.feature import Feature as RefFeature
    from linkedin.learner.ds.index_map import IndexMap as RefIndexMap
    from linkedin.learner.ds.indexed_dataset import IndexedDataset as RefDataset
    from linkedin.learner.ds.indexed_model import IndexedModel as RefModel
    from linkedin.learner.ds.record import TrainingRecord as RefRecord
    from linkedin.learner.ds.representation_utils import (
        index_domain_coeffs_to_nt_domain_coeffs as ref_to_nt,
        nt_domain_coeffs_to_index_domain_coeffs as ref_coeffs_to_index,
        nt_domain_data_to_index_domain_data as ref_data_to_index,
    )
    from linkedin.learner.prediction.hessian_type import HessianType as RefHessianType
    from linkedin.learner.prediction.trainer_sequential_bayesian_logistic_loss_with_l2 import (
        TrainerSequentialBayesianLogisticLossWithL2 as RefTrainer,
    )
except ImportError:  # pragma: no cover - explained to the user
    sys.exit("bench_core needs the oracle: pip install -e '.[test]' (lambda-learner==0.1.0).")

SHAPES = [(8, 6, 3), (50, 20, 5), (200, 60, 8), (1000, 200, 10)]
PENALTY, DELTA = 10.0, 0.8
# The learning-engine issue's targets: geometric means over SHAPES, and no shape (train or cycle) below the last.
TRAIN_GEOMEAN, CYCLE_GEOMEAN, SLOWEST_SHAPE = 10.0, 6.0, 5.0


def make_problem(n, d, k, rng):
    """NTV records and a prior model over d-1 features (plus the intercept)."""
    feature_nts = [("f", str(j)) for j in range(d - 1)]
    true_theta = rng.normal(scale=0.7, size=d - 1)
    records = []
    for _ in range(n):
        cols = rng.choice(d - 1, size=min(k, d - 1), replace=False)
        values = rng.normal(size=len(cols))
        margin = values @ true_theta[cols]
        offset = float(rng.normal(scale=0.5))
        label = float(rng.random() < 1.0 / (1.0 + np.exp(-(margin + offset))))
        records.append((label, offset, [(feature_nts[c], float(v)) for c, v in zip(cols, values)]))
    known = rng.choice(d - 1, size=(d - 1) // 2, replace=False)
    means = [(("intercept", "intercept"), 0.1)] + [(feature_nts[c], float(rng.normal(scale=0.3))) for c in known]
    variances = [(nt, float(rng.uniform(0.02, 0.5))) for nt, _ in means]
    return records, means, variances


def ours_inputs(problem):
    records, means, variances = problem
    recs = [lc.TrainingRecord(y, 1.0, o, [lc.Feature(n, t, v) for (n, t), v in fs]) for y, o, fs in records]
    return recs, [lc.Feature(n, t, v) for (n, t), v in means], [lc.Feature(n, t, v) for (n, t), v in variances]


def ref_inputs(problem):
    records, means, variances = problem
    recs = [RefRecord(y, 1.0, o, [RefFeature(n, t, v) for (n, t), v in fs]) for y, o, fs in records]
    return recs, [RefFeature(n, t, v) for (n, t), v in means], [RefFeature(n, t, v) for (n, t), v in variances]


def cycle_ours(recs, means, variances):
    imap, _ = lc.IndexMap.from_records_means_and_variances(recs, means, variances)
    data = lc.nt_domain_data_to_index_domain_data(recs, imap)
    prior = lc.nt_domain_coeffs_to_index_domain_coeffs(means, variances, imap, PENALTY)
    model, loss, _ = lc.TrainerSequentialBayesianLogisticLossWithL2(
        training_data=data, initial_model=prior, hessian_type=lc.HessianType.DIAGONAL, penalty=PENALTY, delta=DELTA
    ).train()
    return lc.index_domain_coeffs_to_nt_domain_coeffs(model, imap)


def cycle_ref(recs, means, variances):
    imap, _ = RefIndexMap.from_records_means_and_variances(recs, means, variances)
    data = ref_data_to_index(recs, imap)
    prior = ref_coeffs_to_index(means, variances, imap, PENALTY)
    model, loss, _ = RefTrainer(
        training_data=data, initial_model=prior, hessian_type=RefHessianType.DIAGONAL, penalty=PENALTY, delta=DELTA
    ).train()
    return ref_to_nt(model, imap)


def median_seconds(fn, repeats):
    """Median wall time of ``fn``, garbage collection paused while timing (as ``timeit`` does)."""
    fn()  # warm-up: imports, caches
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="timed runs per measurement (median is kept)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    rows, train_ratios, cycle_ratios, worst_gap = [], [], [], -np.inf
    for n, d, k in SHAPES:
        problem = make_problem(n, d, k, rng)
        o_recs, o_means, o_vars = ours_inputs(problem)
        r_recs, r_means, r_vars = ref_inputs(problem)

        imap, _ = lc.IndexMap.from_records_means_and_variances(o_recs, o_means, o_vars)
        o_data = lc.nt_domain_data_to_index_domain_data(o_recs, imap)
        o_prior = lc.nt_domain_coeffs_to_index_domain_coeffs(o_means, o_vars, imap, PENALTY)
        # The reference gets the same matrices (its labels in +-1, as its TrainingRecord makes them).
        r_data = RefDataset(o_data.X.tocsc(), np.where(o_data.y == 1, 1.0, -1.0), o_data.w, o_data.offsets)
        r_prior = RefModel(o_prior.theta, sparse.diags(o_prior.hessian_diagonal()).tocsc())

        def ours_train():
            return lc.TrainerSequentialBayesianLogisticLossWithL2(
                training_data=o_data, initial_model=o_prior, hessian_type=lc.HessianType.DIAGONAL,
                penalty=PENALTY, delta=DELTA,
            ).train()

        def ref_trainer():
            return RefTrainer(
                training_data=r_data, initial_model=r_prior, hessian_type=RefHessianType.DIAGONAL,
                penalty=PENALTY, delta=DELTA,
            )

        t_ours = median_seconds(ours_train, args.repeats)
        t_ref = median_seconds(lambda: ref_trainer().train(), args.repeats)
        c_ours = median_seconds(lambda: cycle_ours(o_recs, o_means, o_vars), args.repeats)
        c_ref = median_seconds(lambda: cycle_ref(r_recs, r_means, r_vars), args.repeats)

        judge = ref_trainer()
        ref_model, _, _ = judge.train()
        our_model, _, _ = ours_train()
        loss_ref, loss_ours = judge.loss(ref_model.theta), judge.loss(our_model.theta)
        gap = (loss_ours - loss_ref) / abs(loss_ref)
        worst_gap = max(worst_gap, gap)
        train_ratios.append(t_ref / t_ours)
        cycle_ratios.append(c_ref / c_ours)
        rows.append((f"{n}x{d} ({k}/row)", t_ref, t_ours, t_ref / t_ours, c_ref, c_ours, c_ref / c_ours, loss_ref, loss_ours))

    print(f"{'shape':<18}{'train ref':>11}{'ours':>10}{'speed-up':>10}{'cycle ref':>11}{'ours':>10}{'speed-up':>10}"
          f"{'loss ref':>16}{'loss ours':>16}")
    for name, tr, to, rt, cr, co, rc, lr, lo in rows:
        print(f"{name:<18}{tr * 1e3:>9.3f}ms{to * 1e3:>8.3f}ms{rt:>9.1f}x{cr * 1e3:>9.3f}ms{co * 1e3:>8.3f}ms{rc:>9.1f}x"
              f"{lr:>16.9f}{lo:>16.9f}")
    geo_train = float(np.exp(np.mean(np.log(train_ratios))))
    geo_cycle = float(np.exp(np.mean(np.log(cycle_ratios))))
    print(f"geometric mean speed-up: train {geo_train:.1f}x (required >= {TRAIN_GEOMEAN:g}x), "
          f"NTV cycle {geo_cycle:.1f}x (required >= {CYCLE_GEOMEAN:g}x)")
    print(f"slowest shape: train {min(train_ratios):.1f}x, cycle {min(cycle_ratios):.1f}x "
          f"(required >= {SLOWEST_SHAPE:g}x)")
    print(f"worst relative loss gap (ours - ref) / |ref|: {worst_gap:.2e} (required <= 1e-9)")
    ok = (geo_train >= TRAIN_GEOMEAN and geo_cycle >= CYCLE_GEOMEAN and min(train_ratios + cycle_ratios) >= SLOWEST_SHAPE
          and worst_gap <= 1e-9)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
