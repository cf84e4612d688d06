"""Real local services for tests and benchmarks: Azurite, node and mount processes, clusters, links.

One idea a module (no pytest here, and nothing started at import):

- `process`: the lifecycle every child service shares (start, ready, log, SIGTERM then SIGKILL)
- `ports`: a free loopback port; waiting until a port listens
- `paths`: the source tree the harness runs from; scratch folders
- `azurite`: the Azure Blob emulator as a child process, its account and connection strings
- `blobs`: a file uploaded as a blob (creating its container)
- `node`: `cachenode serve` as a child process
- `cluster`: n node processes sharing a peers file; a node's view of the members
- `mount`: `cachenode mount` as a child process
- `read_child`: one of several reader processes that load one file at once (loader or plain open)
- `blobproxy`: a counting, fault-injecting HTTP proxy in front of Azurite (the origin-side witness)
- `netns`: test hosts in network namespaces joined by veth links (root)
- `relay`: a TCP relay from one address to another, on a thread
- `tls`: a self-signed certificate for an HTTPS endpoint on loopback
"""
