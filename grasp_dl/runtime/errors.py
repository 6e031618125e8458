"""Exceptions that carry a message a user can act on (what is wrong, where, and the fix)."""

from __future__ import annotations


class GraspDLError(Exception):
    """Base class of every error grasp-dl raises on purpose."""


class CatalogError(GraspDLError, ValueError):
    """A catalogue cannot be read or lacks what the requested features need."""


class ConfigError(GraspDLError, ValueError):
    """A configuration value or a checkpoint does not fit the data it is applied to."""


class MissingDependencyError(GraspDLError, ImportError):
    """An optional dependency is not installed: the message names the extra that brings it."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be trusted, read, or applied: unreadable, not grasp-dl's, another model or data."""
