"""Scenes: what edge-run makes of the decisions of a frame (per-frame results, cart tracks and events, shelf slots)."""
