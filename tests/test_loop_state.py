"""`nightseg.core.loop_state`: the resumable state of the plain training loops (relight, translation, RDN)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from nightseg.core.errors import UserError
from nightseg.core.loop_state import load_loop_state, save_loop_state, state_step
from nightseg.core.schedule import linear_decay_factor, poly_factor


def _setup(seed: int, optimizer: str):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly_factor(s, 10))
    return net, opt, sched


def _steps(net, opt, sched, start: int, stop: int) -> list[float]:
    losses = []
    for step in range(start, stop):
        x = torch.randn(6, 4, generator=torch.Generator().manual_seed(step))
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_through_the_loop_state_equals_an_uninterrupted_run(tmp_path, optimizer):
    net, opt, sched = _setup(0, optimizer)
    expected = _steps(net, opt, sched, 0, 8)

    net, opt, sched = _setup(0, optimizer)
    losses = _steps(net, opt, sched, 0, 5)
    save_loop_state(tmp_path / "state", 5, {"net": net}, {"opt": opt}, {"sched": sched},
                    settings={"seed": 0}, extra={"losses": losses, "order": [3, 1, 2]})
    assert state_step(tmp_path / "state") == 5

    fresh, fresh_opt, fresh_sched = _setup(1, optimizer)  # other initial weights: everything must come back
    step, extra = load_loop_state(tmp_path / "state", {"net": fresh}, {"opt": fresh_opt}, {"sched": fresh_sched},
                                  settings={"seed": 0})
    assert step == 5 and extra == {"losses": losses, "order": [3, 1, 2]}
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(1e-2 * poly_factor(5, 10))
    resumed = extra["losses"] + _steps(fresh, fresh_opt, fresh_sched, step, 8)
    assert resumed == expected  # bit-identical losses, so identical optimizer state and schedule
    reference, ref_opt, ref_sched = _setup(0, optimizer)
    _steps(reference, ref_opt, ref_sched, 0, 8)
    for key, value in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_other_settings_missing_entries_and_reserved_names_are_refused(tmp_path):
    net, opt, _ = _setup(0, "sgd")
    save_loop_state(tmp_path / "s", 3, {"net": net}, {"opt": opt}, settings={"seed": 0, "size": 128})
    with pytest.raises(UserError, match=r"s/state.json: was trained with other settings \(size=128, this run asks for 64\)"):
        load_loop_state(tmp_path / "s", {"net": net}, {"opt": opt}, settings={"seed": 0, "size": 64})
    with pytest.raises(UserError, match="no 'generator' entry"):
        load_loop_state(tmp_path / "s", {"net": net, "generator": nn.Linear(1, 1)})
    with pytest.raises(ValueError, match="reserved or given twice"):
        save_loop_state(tmp_path / "t", 1, {"settings": net})
    with pytest.raises(ValueError, match="reserved or given twice"):
        save_loop_state(tmp_path / "t", 1, {"net": net}, extra={"net": 1})
    assert state_step(tmp_path / "t") is None


def test_schedules():
    # poly 0.9 (DANNet / ULCA), updated every step, optional linear warm-up
    assert poly_factor(0, 100) == 1.0 and poly_factor(50, 100) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, 100) == 0.0 and poly_factor(0, 100, warmup_steps=4) == 0.25
    # CycleGAN: constant, then linear to zero
    values = [linear_decay_factor(s, 10, 4) for s in range(11)]
    assert values[:5] == [1.0] * 5 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(values))
