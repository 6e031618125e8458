"""Figures: diagnostic panels of predictions."""
