"""Measured sensitivity: layerwise and MixDQ analyses, the QuantAnalyzer report, activation
calibration and label validity (docs/analysis.md)."""
