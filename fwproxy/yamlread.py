"""YAML as fwproxy reads it: PyYAML's safe loader, but a key given twice is an error.

PyYAML keeps the last of duplicate keys, so a second ``access:`` section (or a second
``read_only:``) would silently replace the first: a config mistake that fails open.
"""

from __future__ import annotations

from typing import Any

import yaml


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping, at any level."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if earlier is not None and key != "<<":
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"duplicate key {str(key)!r} (lines {earlier.start_mark.line + 1} and "
                        f"{key_node.start_mark.line + 1}); give each key once",
                        key_node.start_mark)
                first[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> object:
    """`text` parsed as YAML (safe types only); a `yaml.YAMLError` for a duplicate key too,
    its ``problem`` starting with ``duplicate key``."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
