"""The two places where vLLM handles az:// models before any loader runs, hooked for `cachenode`.

Pinned to the vLLM release the `vllm` extra installs: tests/test_vllm.py fails if either hook
point moves. With another release the hooks are installed only if both points still look the same.
1. `ObjectStorageModel.pull_files`: vLLM copies an az:// model's config and tokenizer files with
   Run:ai's client (blob credentials on the engine host) while it builds the ModelConfig. With a
   cluster configured (CACHENODE_NODES: no loader options exist yet at that point) the files come
   through the cluster instead.
2. `VllmConfig.try_verify_and_update_config` refuses an object-store model unless the load format
   is one of Run:ai's or ModelExpress's; `cachenode` is admitted too.
"""

from __future__ import annotations

import inspect
import logging

# Under vLLM's logger, so our lines show in its log with its format and level.
log = logging.getLogger("vllm.plugins.cachenode")

VLLM_VERSION = "0.32.0"
HOOKED = "__cachenode_hook__"


def hook_points():
    """(ObjectStorageModel, VllmConfig, ModelConfig) of the installed vLLM."""
    from vllm.config import ModelConfig, VllmConfig
    from vllm.transformers_utils.runai_utils import ObjectStorageModel

    return ObjectStorageModel, VllmConfig, ModelConfig


def check_hook_points() -> list[str]:
    """What no longer matches the pinned release (empty when both hooks apply)."""
    storage, vllm_config, model_config = hook_points()
    problems = []
    params = list(inspect.signature(_original(storage.pull_files)).parameters)
    if params != ["self", "model_path", "allow_pattern", "ignore_pattern"]:
        problems.append(f"ObjectStorageModel.pull_files{params}")
    pull_src = inspect.getsource(model_config.maybe_pull_model_tokenizer_for_runai)
    if "ObjectStorageModel(url=model)" not in pull_src or ".pull_files(" not in pull_src:
        problems.append("ModelConfig.maybe_pull_model_tokenizer_for_runai no longer pulls via ObjectStorageModel")
    verify_src = inspect.getsource(_original(vllm_config.try_verify_and_update_config))
    if "is_runai_obj_uri(" not in verify_src or "model_weights" not in verify_src:
        problems.append("VllmConfig.try_verify_and_update_config no longer checks model_weights")
    return problems


def _original(fn):
    return getattr(fn, HOOKED, fn)


def install(make_client) -> bool:
    """Install both hooks once per process (vLLM loads plug-ins in every process, maybe twice).
    `make_client()` gives a cachenode Client from the environment, or None when no cluster is set."""
    import vllm

    storage, vllm_config, _ = hook_points()
    if hasattr(storage.pull_files, HOOKED):
        return True
    if vllm.__version__ != VLLM_VERSION:
        problems = check_hook_points()
        if problems:
            log.warning("cachenode: vLLM %s is not %s and its hook points moved (%s): az:// models "
                        "are not pulled through the cluster", vllm.__version__, VLLM_VERSION, "; ".join(problems))
            return False
    pull, verify = storage.pull_files, vllm_config.try_verify_and_update_config

    def pull_files(self, model_path: str = "", allow_pattern=None, ignore_pattern=None):
        client = make_client() if model_path.lower().startswith("az://") else None
        if client is None:
            return pull(self, model_path, allow_pattern, ignore_pattern)
        from cachenode.errors import CacheError

        from .pull import pull_files as pull_through

        with client:
            try:
                names = pull_through(client, model_path, self.dir, allow_pattern, ignore_pattern)
            except CacheError as exc:  # raised as is: vLLM builds its config here, ours is the cause
                raise (exc if model_path in str(exc) else type(exc)(f"pulling {model_path}: {exc}")) from None
        log.info("cachenode: pulled %d files of %s through the cluster", len(names), model_path)

    def try_verify_and_update_config(self):
        model = self.model_config
        ours = (model is not None and self.load_config.load_format == "cachenode"
                and str(getattr(model, "model_weights", "")).lower().startswith("az://"))
        if not ours:
            return verify(self)
        # The check refuses load formats other than Run:ai's for an object-store model_weights;
        # nothing else in this method reads model_weights, so it is hidden only for the call.
        weights, model.model_weights = model.model_weights, ""
        try:
            return verify(self)
        finally:
            model.model_weights = weights

    setattr(pull_files, HOOKED, pull)
    setattr(try_verify_and_update_config, HOOKED, verify)
    storage.pull_files = pull_files
    vllm_config.try_verify_and_update_config = try_verify_and_update_config
    return True
