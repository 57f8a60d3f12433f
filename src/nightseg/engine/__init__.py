"""The training engine: `train(cfg, run_dir)` runs any recipe on Lightning (see `nightseg.engine.trainer`)."""

from nightseg.engine.run import RunDir, prepare_run
from nightseg.engine.trainer import build_module, env_rank, resolve_devices, train

__all__ = ["RunDir", "build_module", "env_rank", "prepare_run", "resolve_devices", "train"]
