"""Every layer rule, loaded: import this module to look rules up by layer type.

Importing the rule modules registers them (``profiler.rules.registry.register``); this module
imports them all, so that the registry itself imports no rule and the package has no import
circle: args <- registry <- each rule module <- catalog <- the rest of the package.
"""
from __future__ import annotations

from profiler.rules import (activations, attention, conv, core, elementwise, merge, normalization,  # noqa: F401
                            pooling, preprocessing, recurrent, reshaping, separable)
from profiler.rules.registry import Rule, registered, registered_rules


def rule_for(type_name: str) -> Rule:
    """The rule of a layer type; an unknown one is an ``UnsupportedLayerError`` naming the known."""
    return registered(type_name)


def all_rules() -> dict[str, Rule]:
    return registered_rules()
