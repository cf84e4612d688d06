"""The benchmark CLI (`cachebench`): load-time measurements and the cluster simulator."""
