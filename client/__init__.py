"""The loader: open checkpoint files through the cluster cache."""
