import csv

import pytest
import torch

from helpers import tiny_model_config
from pokediff.checkpoint import CheckpointError, atomic_torch_save, load_file, load_model
from pokediff.config import DiffusionConfig, TrainConfig
from pokediff.training.ema import EMA
from pokediff.training.loop import NonFiniteLossError, train
from pokediff.training.lr import warmup_cosine


def _images(n=4, res=16):
    """n distinct structured RGB images: coloured bars on black."""
    imgs = torch.zeros(n, 3, res, res, dtype=torch.uint8)
    for i in range(n):
        imgs[i, i % 3, : res // 2 * (1 + i % 2), :] = 255
        imgs[i, (i + 1) % 3, :, (3 * i) % res: (3 * i) % res + 5] = 200
    return imgs


def _cfg(**kw):
    base = dict(steps=12, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=4,
                hflip=True, seed=123)
    base.update(kw)
    return TrainConfig(**base)


def test_overfits_four_images(tmp_path):
    cfg = _cfg(steps=300, batch_size=8, lr=2e-3, warmup_steps=20, log_every=10, checkpoint_every=1000,
               hflip=False)
    diffusion = DiffusionConfig(schedule="linear", prediction="eps", loss_weighting="none")
    result = train(_images(), tiny_model_config(), diffusion, cfg, tmp_path, progress=False)
    start, end = sum(result.losses[:10]) / 10, sum(result.losses[-20:]) / 20
    assert len(result.losses) == 300
    assert start > 0.5 and end < 0.25 * start, (start, end)


def test_resume_replays_the_uninterrupted_run_exactly(tmp_path):
    model_cfg, diff_cfg = tiny_model_config(dropout=0.1), DiffusionConfig(schedule="cosine", prediction="v")
    full = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "full", progress=False)

    # "Kill" after 7 steps: the last checkpoint is from step 4, so steps 5-7 are lost and redone.
    part = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "killed", progress=False, stop_after=7)
    assert part.step == 7 and load_file(part.checkpoint)["step"] == 4
    resumed = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "killed", progress=False, resume=True)
    assert resumed.resumed_from == 4 and resumed.step == 12
    assert resumed.losses == full.losses[4:], "resumed losses must equal the uninterrupted run, step for step"

    a, b = load_file(full.model_file), load_file(resumed.model_file)
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    # The log keeps one row per step: the rows of the lost steps 5-7 were replaced, not duplicated.
    with resumed.log_file.open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 13))


def test_resume_refuses_a_different_model(tmp_path):
    train(_images(), tiny_model_config(), DiffusionConfig(), _cfg(steps=4), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="model.base_channels: checkpoint 16 vs params 8"):
        train(_images(), tiny_model_config(base_channels=8), DiffusionConfig(), _cfg(steps=8), tmp_path,
              progress=False, resume=True)


def test_checkpoint_round_trip_rebuilds_the_exact_model(tmp_path):
    model_cfg, diff_cfg = tiny_model_config(), DiffusionConfig(schedule="linear", timesteps=500)
    result = train(_images(), model_cfg, diff_cfg, _cfg(steps=6), tmp_path, progress=False)
    for path in (result.model_file, result.checkpoint):
        model, m_cfg, d_cfg, step = load_model(path)
        assert (m_cfg, d_cfg, step) == (model_cfg, diff_cfg, 6)
        state = load_file(path)["ema"]
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    raw, *_ = load_model(result.model_file, use_ema=False)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 300])
    assert not torch.allclose(raw(x, t), model(x, t)), "EMA and raw weights differ after 6 steps"


def test_atomic_save_never_leaves_a_broken_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"format": "pokediff-checkpoint-v2", "step": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"format": "pokediff-checkpoint-v2", "step": 2}, path)
    monkeypatch.undo()
    assert load_file(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temporary file is cleaned up"


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="model.pt: not a readable checkpoint"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def _all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return True


def test_non_finite_loss_stops_with_the_step_and_never_names_a_bad_checkpoint(tmp_path):
    # The largest learning rate params allow, without clipping, blows the weights up within a few steps. The weights at
    # the step before the NaN loss are still finite, but AdamW's second moments are already inf: on main
    # that state was saved and named "the last good state" (resuming from it gives NaN at once).
    cfg = _cfg(steps=50, lr=1.0, warmup_steps=0, grad_clip=0.0, checkpoint_every=1000)
    with pytest.raises(NonFiniteLossError, match=r"non-finite \(NaN or inf\) at step (\d+)") as info:
        train(_images(), tiny_model_config(), DiffusionConfig(), cfg, tmp_path, progress=False)
    err = info.value
    if err.checkpoint is None:  # no good state: nothing was written, and the message says so
        assert "no good state of this run was saved" in str(err)
        assert not (tmp_path / "checkpoints" / "last.pt").exists()
    else:
        ckpt = load_file(err.checkpoint)
        assert ckpt["step"] == err.good_step and _all_finite([ckpt["model"], ckpt["ema"], ckpt["optimizer"]])


def test_weights_gone_non_finite_are_never_checkpointed_and_the_last_good_one_is_named(tmp_path):
    # AdamW moments at the edge of float32 (finite, so the checkpoint is a good state) make the first
    # update of the resumed run overflow the weights to inf before any loss sees them: the periodic save
    # right after refuses (on main it wrote them, and named that file the last good state).
    model_cfg = tiny_model_config()
    first = train(_images(), model_cfg, DiffusionConfig(), _cfg(steps=2, warmup_steps=0), tmp_path, progress=False)
    ckpt = load_file(first.checkpoint)
    for moments in ckpt["optimizer"]["state"].values():
        moments["exp_avg"].fill_(3e38)
        moments["exp_avg_sq"].zero_()
    atomic_torch_save(ckpt, first.checkpoint)
    with pytest.raises(NonFiniteLossError, match=r"became non-finite \(NaN or inf\) by step 3; the last good "
                                                 r"state \(step 2\) is in .*last\.pt") as info:
        train(_images(), model_cfg, DiffusionConfig(), _cfg(steps=6, warmup_steps=0, checkpoint_every=1), tmp_path,
              progress=False, resume=True)
    assert info.value.checkpoint == first.checkpoint
    kept = load_file(first.checkpoint)
    assert kept["step"] == 2 and _all_finite([kept["model"], kept["ema"], kept["optimizer"]])


def test_a_checkpoint_holding_nan_is_not_resumed_from(tmp_path):
    model_cfg = tiny_model_config()
    first = train(_images(), model_cfg, DiffusionConfig(), _cfg(steps=2, warmup_steps=0), tmp_path, progress=False)
    ckpt = load_file(first.checkpoint)
    next(iter(ckpt["ema"].values())).view(-1)[0] = float("nan")
    atomic_torch_save(ckpt, first.checkpoint)  # as a version that did not check wrote it
    with pytest.raises(CheckpointError, match="not a good state to resume from"):
        train(_images(), model_cfg, DiffusionConfig(), _cfg(steps=4), tmp_path, progress=False, resume=True)


def test_a_state_holding_nan_is_not_written_and_the_previous_file_stays(tmp_path):
    from pokediff.checkpoint import NonFiniteStateError, TrainingState, save_model_file

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ema = EMA(model)
    state = TrainingState(model, ema, opt, sched, torch.Generator(), tiny_model_config(), DiffusionConfig(), _cfg())
    path = state.save(tmp_path / "last.pt", 1)
    opt.state[model.weight]["exp_avg_sq"][0, 0] = float("inf")
    with pytest.raises(NonFiniteStateError, match=r"1 non-finite value\(s\).*optimizer\.state\.0\.exp_avg_sq"):
        state.save(path, 2)
    assert load_file(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.pt"]
    ema.model.bias.data[0] = float("nan")
    with pytest.raises(NonFiniteStateError, match=r"ema\.bias"):
        save_model_file(tmp_path / "model.safetensors", model.state_dict(), ema.state_dict(), tiny_model_config(),
                        DiffusionConfig(), 2)
    assert not (tmp_path / "model.safetensors").exists()


def test_bad_images_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"uint8 tensor of shape \(N, 3, 16, 16\).*got torch.float32"):
        train(_images().float(), tiny_model_config(), DiffusionConfig(), _cfg(), tmp_path, progress=False)


def test_warmup_then_cosine_schedule():
    mult = [warmup_cosine(s, 100, 10, 0.1) for s in range(100)]
    assert mult[0] == pytest.approx(0.1) and mult[9] == pytest.approx(1.0)
    assert mult[10] == pytest.approx(1.0) and mult[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(mult[10:], mult[11:]))


def test_ema_decay_warms_up_and_tracks_the_weights():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.999
    with torch.no_grad():
        net.weight.fill_(1.0)
    before = ema.model.weight.clone()
    ema.update(net, step=0)  # decay 0.1: moves 90 % of the way
    torch.testing.assert_close(ema.model.weight, 0.1 * before + 0.9 * torch.ones(2, 2))
