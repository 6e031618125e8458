"""Scoring a catalogue with a trained clustering module.

:mod:`~grasp_dl.inference.predict` streams a catalogue through a module,
:mod:`~grasp_dl.membership.rules` decides which group is the cluster and summarises it, and
:mod:`~grasp_dl.inference.no_astrometry` scores the stars that have positions only.
"""
