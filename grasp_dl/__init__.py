"""grasp-dl: deep unsupervised clustering of stellar catalogues around globular clusters."""

__version__ = "0.1.0"
