"""Inference-engine plug-ins (vLLM): they translate an engine's loader calls into cachenode reads."""
