"""Figures: :mod:`~grasp_dl.figures.plotting` draws them, :mod:`~grasp_dl.figures.tensorboard` logs them."""
