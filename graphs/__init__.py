"""Denoiser -> module-level DAG (torch.export), node features, torch-geometric conversion and
drawings (docs/graphs.md)."""
