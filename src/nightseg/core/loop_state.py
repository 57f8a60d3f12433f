"""Resumable state of the plain (non-Lightning) training loops: relight, translation, NightLab's RDN / HDM.

A loop calls `save_loop_state` after a step (or epoch) and `load_loop_state` before training when
``state_step(folder)`` is not None. The state is one folder in the training-state format of
`nightseg.core.training_state` (safetensors + ``state.json``, written atomically, nothing pickled). Its
tree is flat::

    {"global_step": step, "settings": {...},
     <module name>: module.state_dict(), <optimizer name>: optimizer.state_dict(),
     <scheduler name>: scheduler.state_dict(), <extra key>: value, ...}

(the layout the translation loop wrote before this helper existed, so its older states still load).
Optimizer state dicts round-trip exactly (Adam's ``exp_avg``/``exp_avg_sq``/``step``, SGD's momentum
buffers, the param groups' learning rates). ``settings`` is what must not change between a run and its
continuation (seed, batch size, schedule length, ...): a resume with other settings is refused with a
UserError naming the file and the keys. Everything else a loop needs to continue exactly (loss history,
RNG states as uint8 tensors, a sample order, image pools) goes into ``extra``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from nightseg.core.checkpoint import load_state_into
from nightseg.core.errors import UserError
from nightseg.core.training_state import STATE_FILE, load_state, save_state, state_step

__all__ = ["load_loop_state", "save_loop_state", "state_step"]

RESERVED = ("global_step", "settings")


def save_loop_state(
    folder: str | os.PathLike, step: int, modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, Optimizer] | None = None, schedulers: Mapping[str, LRScheduler] | None = None,
    *, settings: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a loop's state after `step` steps (or epochs) into `folder`; return its ``state.json``.

    `modules`, `optimizers` and `schedulers` are saved by their ``state_dict()`` under their names;
    `settings` and `extra` (nested dicts/lists of JSON values, tensors, numpy arrays) as they are. Names
    must be unique across all four and not ``global_step``/``settings`` (ValueError otherwise).
    """
    tree: dict[str, Any] = {"global_step": int(step), "settings": dict(settings or {})}
    groups: list[Mapping[str, Any]] = [
        {name: m.state_dict() for name, m in modules.items()},
        {name: o.state_dict() for name, o in (optimizers or {}).items()},
        {name: s.state_dict() for name, s in (schedulers or {}).items()},
        extra or {},
    ]
    for group in groups:
        for name, value in group.items():
            if name in tree:
                raise ValueError(f"loop state entry {name!r} is reserved or given twice")
            tree[name] = value
    return save_state(tree, folder)


def load_loop_state(
    path: str | os.PathLike, modules: Mapping[str, nn.Module], optimizers: Mapping[str, Optimizer] | None = None,
    schedulers: Mapping[str, LRScheduler] | None = None, *, settings: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restore a state written by `save_loop_state` (`path`: its folder or ``state.json``) in place.

    With `settings`, first check that the state was saved with exactly these settings (UserError naming
    the file and the differing keys otherwise), then load the modules (strictly), optimizers and
    schedulers of the given names. Returns ``(step, extra)``: the saved step and every other entry.
    """
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() or path.suffix != ".json" else path
    state = load_state(file)
    if settings is not None:
        saved = state.get("settings") or {}
        diff = [f"{k}={saved.get(k)!r}, this run asks for {settings.get(k)!r}"
                for k in dict.fromkeys([*saved, *settings]) if saved.get(k) != settings.get(k)]
        if diff:
            raise UserError(f"{file}: was trained with other settings ({'; '.join(diff)}); "
                            "use the same settings to resume")
    named: dict[str, Any] = {**modules, **(optimizers or {}), **(schedulers or {})}
    missing = [name for name in named if name not in state]
    if missing:
        raise UserError(f"{file}: this training state has no {', '.join(map(repr, missing))} entry; was it written by another loop?")
    for name, module in modules.items():
        load_state_into(module, state[name], file)
    for name, optimizer in (optimizers or {}).items():
        optimizer.load_state_dict(state[name])
    for name, scheduler in (schedulers or {}).items():
        scheduler.load_state_dict(state[name])
    extra = {k: v for k, v in state.items() if k not in RESERVED and k not in named}
    return int(state["global_step"]), extra
