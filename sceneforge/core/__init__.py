"""sceneforge/core."""
