"""The cluster simulator behind `cachebench simulate`: a flow-level model of loads at any scale."""
