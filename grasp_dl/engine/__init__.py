"""Opt-in training speed: block steps, CUDA graphs, epoch means."""
