"""Denoiser adapters: one per model family (the `digits` default, diffusers pipelines), the model
spec read from params, shipped architecture configs and derived checkpoints (docs/models.md)."""
