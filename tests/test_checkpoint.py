import os

import pytest
import torch

from hasten.checkpoint import (load_checkpoint, optimizer_from_flat, optimizer_to_flat,
                               save_checkpoint)
from hasten.errors import HastenError


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    save_checkpoint(str(tmp_path / "ck"), tensors, {"optimizer": meta, "step": 1})
    loaded, state = load_checkpoint(str(tmp_path / "ck"))
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    optimizer_from_flat(opt2, loaded, state["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1
    for p in model.parameters():
        torch.testing.assert_close(opt.state[p]["exp_avg"], opt2.state[p]["exp_avg"])
    # Saving again replaces the folder and leaves no temporary folder behind.
    save_checkpoint(str(tmp_path / "ck"), tensors, {"optimizer": meta, "step": 2})
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(HastenError, match="checkpoint file not found"):
        load_checkpoint(str(tmp_path))
