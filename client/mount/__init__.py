"""`cachenode mount`: the cluster cache as a read-only FUSE filesystem."""
