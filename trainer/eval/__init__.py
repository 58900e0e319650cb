"""Frozen-feature evaluation: standalone backbones, task datasets, probes, 2D/3D tracks, reports."""
