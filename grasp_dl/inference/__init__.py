"""Scoring catalogues with trained modules: prediction, which group is the cluster, plausibility."""
