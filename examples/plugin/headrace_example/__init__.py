"""An example headrace plugin package (docs/plugins.md walks through it)."""
