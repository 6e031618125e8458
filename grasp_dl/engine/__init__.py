"""Opt-in training speed: block steps and epoch means."""
