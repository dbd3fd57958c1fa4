"""GNN sensitivity predictor: (DAG + config) -> predicted FID; k-fold ensemble, baselines on the
same splits, per-layer / per-block sensitivity tables, inspection report.

    dataset.py      cache rows × DAG -> tensors; deterministic test split + k folds; target scaling
    model.py        the GNN (node encoder, GATv2/GIN/Transformer convs, hop-wise readouts)
    losses.py       MSE + differentiable ranking terms (pairwise / soft-rank / LambdaRank)
    train.py        TrainParams (params.yaml `train:`), ensemble training, checkpoints, metrics
    metrics.py      Spearman, Kendall τ, NDCG@10, precision@10, MAE (top = lowest FID)
    baselines.py    summed error, ridge, gradient-boosted trees, MLP on one-hot options
    sensitivity.py  per-(layer, option) and per-block Δfid around a reference config
    api.py          Ensemble.load(dir).predict / predict_members / sensitivity
    inspect.py      the inspection report (PNGs, markdown, JSON, DVC-plot CSVs)
    synthetic.py    a synthetic cache with known sensitivities (tests, benches)
"""
