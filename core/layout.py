"""Where one model's data products live under the data root (README "Layout": `data/`) and its metrics:
the one place that spells `data/bank/NAME`, `data/quant_cache/NAME.parquet`, ... for every command,
DVC stage and library function."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Where a model's data products live under the data root (`data/`) and its metrics."""

    root: Path
    name: str
    metrics_root: Path = Path("metrics")

    @property
    def metrics(self) -> Path:
        """`metrics/NAME`: the model's metrics (search.json, noise.json, predictor.json, ...), so
        several models in one project keep their own."""
        return self.metrics_root / self.name

    @property
    def models(self) -> Path:
        """`DATA/models/NAME`: what `qsens prepare` writes (the trained digits model or model.json)."""
        return self.root / "models" / self.name

    @property
    def bank(self) -> Path:
        """`DATA/bank/NAME`: the bank."""
        return self.root / "bank" / self.name

    @property
    def graph(self) -> Path:
        """`DATA/graphs/NAME.json`: the denoiser's DAG."""
        return self.root / "graphs" / f"{self.name}.json"

    @property
    def shards(self) -> Path:
        """`DATA/shards/NAME`: the sampling workers' shards."""
        return self.root / "shards" / self.name

    @property
    def cache(self) -> Path:
        """`DATA/quant_cache/NAME.parquet`: the quant_cache."""
        return self.root / "quant_cache" / f"{self.name}.parquet"

    @property
    def probe(self) -> Path:
        """`DATA/probe/NAME.safetensors`: the feature-shift probe."""
        return self.root / "probe" / f"{self.name}.safetensors"

    @property
    def predictor(self) -> Path:
        """`DATA/predictor/NAME`: the trained predictor."""
        return self.root / "predictor" / self.name

    @property
    def analysis(self) -> Path:
        """`DATA/analysis/NAME`: the measured sensitivity analyses."""
        return self.root / "analysis" / self.name

    @property
    def search(self) -> Path:
        """`DATA/search/NAME`: the search's configs and reports."""
        return self.root / "search" / self.name

    @property
    def reference(self) -> Path:
        """`DATA/reference/NAME`: the FID reference `qsens prepare` installed or built."""
        return self.root / "reference" / self.name

    @property
    def fp_cache(self) -> Path:
        """`DATA/fp_cache/NAME`: the FP model's images and features per seed set (paired scores)."""
        return self.root / "fp_cache" / self.name

    @property
    def active(self) -> Path:
        """`DATA/active/NAME`: active learning's union cache, retrained predictor and learning curve."""
        return self.root / "active" / self.name

    @property
    def transfer(self) -> Path:
        """`DATA/transfer/NAME`: `qsens transfer`'s labels, predictor and configs for a fine-tune."""
        return self.root / "transfer" / self.name

    @property
    def metric_validity(self) -> Path:
        """`DATA/metric_validity/NAME`: the label study's generations and per-config labels."""
        return self.root / "metric_validity" / self.name

    @property
    def cost(self) -> Path:
        """`DATA/cost/NAME`: each stage's spend (images, forward passes), summed by `qsens cost`."""
        return self.root / "cost" / self.name

    def of(self, name: str) -> "Layout":
        """The same data root and metrics root for model `name` (a derived checkpoint, ...)."""
        return Layout(self.root, name, self.metrics_root)
