"""Engine plug-ins: each meets an inference engine in its own registry and translates to cachenode's API."""
