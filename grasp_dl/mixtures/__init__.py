"""The EM mixtures of stellar astrometry: plain numpy/torch, no Lightning."""
