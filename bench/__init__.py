"""The benchmark CLI (`cachebench`) and the local services it and the tests start."""
