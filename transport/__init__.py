"""Wire transports between loaders and cache nodes (HTTP over TCP today)."""
