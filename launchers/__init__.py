"""Launchers: the layer above both services that starts them together (the demo's and the notebook's local run)."""
