"""Wire transports between loaders and cache nodes: HTTP over TCP, and UCX; imports only core types."""
