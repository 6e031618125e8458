"""The jobs a command runs (train, predict, evaluate, sweeps), each a function of a config."""
