"""Scoring configs: the random config sampler, workers and shards, the quant_cache, FID and the
content scores, FID references, paired labels, the noise check and cost counting (docs/sampling.md)."""
