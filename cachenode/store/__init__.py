"""The node's block store: a bounded memory LRU over a bounded disk LRU."""
