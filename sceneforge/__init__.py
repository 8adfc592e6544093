"""sceneforge."""
