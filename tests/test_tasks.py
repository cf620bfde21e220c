"""The task registry, the task protocol, and each built-in task's data, model and evaluation."""

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F

from specdyn.branching import matrix_names
from specdyn.tasks import TASKS, load_task, load_user_task, make_config, make_task, task_from_config
from specdyn.tasks.base import Task, recalibrate, recalibrate_bn

# Small configs: every test here runs in well under a second per task.
SMALL = {
    "modadd": dict(p=11, data_frac=0.5, d_model=16, n_heads=4, d_mlp=32),
    "mlp": dict(in_dim=8, width=16, n_train=90, n_val=50),
    "cnn": dict(image_size=8, widths=(4, 4, 8, 8), n_train=60, n_val=30),
    "lstm": dict(feature_dim=4, hidden=8, seq_len=6, n_train=40, n_val=20),
    "lm": dict(corpus_bytes=12_000, context=16, d_model=16, n_heads=2, d_mlp=16),
    "unet": dict(image_size=8, channels=(4, 4, 8, 8), embed_dim=8, groups=2, n_train=40, n_val=20),
}
FINAL_LAYER = {  # docs/method.md 0: "final layer" = the last ndim>=2 parameter
    "modadd": "decoder.weight", "mlp": "layers.3.weight", "cnn": "fc.weight",
    "lstm": "linear.weight", "lm": "decoder.weight", "unet": "tconv1.weight",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def small(name, **kw):
    return make_task(name, **{**SMALL[name], **kw})


def test_registry_lists_every_task_without_importing_them():
    assert list(TASKS) == ["modadd", "mlp", "cnn", "lstm", "lm", "unet"]
    assert set(SMALL) == set(TASKS)


@pytest.mark.parametrize("name", list(SMALL))
def test_default_models_follow_the_papers_naming(name):
    task = make_task(name)
    assert isinstance(task, Task)
    names = matrix_names(task.build_model())
    assert names[-1] == FINAL_LAYER[name]
    if name in ("modadd", "lm"):
        assert names[0] == "embed.weight"
        assert "layers.0.self_attn.in_proj_weight" in names
        assert task.config.n_heads * (task.config.d_model // task.config.n_heads) == task.config.d_model
    if name == "modadd":  # docs/method.md 4: L = 6 matrices
        assert len(names) == 6
    if name == "unet":
        assert "tconv4.weight" in names and "time_embed.0.W" not in names  # the 1-D Fourier W is excluded


@pytest.mark.parametrize("name", list(SMALL))
def test_each_task_is_deterministic_and_leaves_the_global_rng_alone(name):
    a, b = small(name), small(name)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    ma, mb = a.build_model(), b.build_model()
    assert torch.equal(torch.rand(1), expected_next)
    for (ka, va), (kb, vb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    for split in ("train", "val"):
        for ta, tb in zip(a.data(split), b.data(split)):
            assert torch.equal(ta, tb)
    for ba, bb in zip(a.train_batches(3), b.train_batches(3)):
        assert all(torch.equal(x, y) for x, y in zip(ba, bb))
    assert not torch.equal(small(name, seed=1).build_model().state_dict()[FINAL_LAYER[name]],
                           ma.state_dict()[FINAL_LAYER[name]])  # fmt: skip


@pytest.mark.parametrize("name", list(SMALL))
def test_evaluate_is_an_example_weighted_mean(name):
    task = small(name)
    task.eval_batch_size = 7  # force a last partial batch
    model = task.build_model()
    model.train()
    result = task.evaluate(model, "val")
    assert model.training  # restored
    assert set(result) == ({"loss", "err"} if task.has_error else {"loss"})
    with torch.no_grad():
        model.eval()
        whole = tuple(task.data("val"))
        losses, errs = task.batch_loss(model, whole)
    assert result["loss"] == pytest.approx(losses.double().mean().item(), rel=1e-5)
    if task.has_error:
        assert result["err"] == pytest.approx(errs.double().mean().item(), rel=1e-6)
        assert 0 <= result["err"] <= 1


def test_modadd_data_split_and_labels():
    task = make_task("modadd")
    (xt, yt), (xv, _) = task.data("train"), task.data("val")
    assert len(xt) == int(0.3 * 113 * 113) == 3830 and len(xt) + len(xv) == 113 * 113
    pairs = {tuple(r[:2].tolist()) for r in torch.cat([xt, xv])}
    assert len(pairs) == 113 * 113  # disjoint and complete
    assert torch.equal(yt, (xt[:, 0] + xt[:, 1]) % 113) and torch.all(xt[:, 2] == 113)
    # the split follows data_seed, not the run seed (branches with other seeds share the data)
    assert torch.equal(make_task("modadd", seed=5).data("train")[0], xt)
    assert not torch.equal(make_task("modadd", data_seed=5).data("train")[0], xt)


def test_modadd_fast_path_equals_the_plain_transformer():
    task = small("modadd")
    model = task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = task.data("train")[0]
    fast = model(x)
    block = model.layers[0]
    h = model.embed(x) * model.embed_mult + model.pos
    plain = model.decoder(model.norm(block(h)[:, -1]))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    # and the gradients agree
    g_fast = torch.autograd.grad(F.cross_entropy(model(x), task.data("train")[1]), model.embed.weight)[0]
    h = model.embed(x) * model.embed_mult + model.pos
    g_plain = torch.autograd.grad(F.cross_entropy(model.decoder(model.norm(block(h)[:, -1])), task.data("train")[1]),
                                  model.embed.weight)[0]  # fmt: skip
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-6)


def test_mlp_random_labels_permute_the_true_labels():
    true, rnd = small("mlp"), small("mlp", random_labels=True)
    yt = torch.cat([true.data("train")[1], true.data("val")[1]])
    yr = torch.cat([rnd.data("train")[1], rnd.data("val")[1]])
    assert torch.equal(torch.sort(yt).values, torch.sort(yr).values)
    assert (yt != yr).float().mean() > 0.5
    assert torch.equal(true.data("train")[0], rnd.data("train")[0])


def test_train_batches_shuffle_per_epoch_and_drop_the_partial_batch():
    task = small("mlp", batch_size=32)
    e0, e1 = task.train_batches(0), task.train_batches(1)
    assert len(e0) == task.steps_per_epoch() == 90 // 32
    assert all(len(b[0]) == 32 for b in e0)
    assert not torch.equal(e0[0][0], e1[0][0])
    full = small("modadd")
    assert full.steps_per_epoch() == 1 and len(full.train_batches(0)[0][0]) == full.n_examples("train")


def test_lm_corpus_and_windows():
    task = small("lm")
    x, y = task.data("train")
    assert x.shape[1] == 16 and torch.equal(x[0, 1:], y[0, :-1]) and int(x.max()) < 256
    info = task.data_info()
    assert len(info["corpus_sha256"]) == 64 and info["corpus_files"]
    assert len(list(task.batches("train"))) >= 1


def test_unet_eval_noise_is_fixed_so_val_loss_is_deterministic():
    task = small("unet")
    model = task.build_model()
    assert task.evaluate(model, "val") == task.evaluate(model, "val")
    x0, t, noise = task.train_batches(0)[0]
    assert x0.shape[1:] == (1, 8, 8) and t.max() < task.config.timesteps and noise.shape == x0.shape
    assert float(x0.min()) >= -1 and float(x0.max()) <= 1


def test_recalibrate_bn_is_the_cumulative_average_of_batch_statistics():
    task = small("cnn")
    model = task.build_model()
    bn = model.layers[0].bn
    bn.running_mean.fill_(5.0)
    recalibrate(task, model)
    with torch.no_grad():
        means = [model.layers[0].conv(b[0]).mean(dim=(0, 2, 3)) for b in task.batches("train")]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1  # restored after the cumulative pass
    lm = small("lm")  # no BatchNorm: a no-op
    m = lm.build_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    recalibrate_bn(m, lm.batches("train"))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_lr_schedules():
    t = make_task("lm", steps=1100, warmup_steps=100, lr=1.0, min_lr_ratio=0.1)
    assert t.lr_at(0) == pytest.approx(0.01) and t.lr_at(99) == pytest.approx(1.0)
    assert t.lr_at(100) == pytest.approx(1.0) and t.lr_at(600) == pytest.approx(0.55)
    assert t.lr_at(1100) == pytest.approx(0.1)
    assert make_task("modadd", lr=1e-3).lr_at(1234) == 1e-3  # constant


def test_config_overrides_are_typed_and_checked():
    c = make_config("lm", {"betas": "[0.8, 0.9]", "steps": "10", "lr": "3e-4"})
    assert c.betas == (0.8, 0.9) and c.steps == 10 and c.lr == 3e-4
    assert make_config("mlp", {"random_labels": "true"}).random_labels is True
    assert make_config("cnn", {"widths": "8,8"}).widths == (8, 8)
    with pytest.raises(ValueError, match="no config key 'nope'"):
        make_config("mlp", {"nope": 1})
    with pytest.raises(ValueError, match="random_labels"):
        make_config("mlp", {"random_labels": "maybe"})
    with pytest.raises(ValueError, match="integer"):
        make_config("mlp", {"steps": 2.5})
    with pytest.raises(ValueError, match="unknown task"):
        make_task("resnet")


def test_task_from_config_rebuilds_the_exact_task():
    task = small("modadd", seed=3, weight_decay=0.0)
    from dataclasses import asdict

    again = task_from_config("modadd", json.dumps(asdict(task.config)))
    assert again.config == task.config
    assert torch.equal(again.data("val")[0], task.data("val")[0])
    assert load_task("modadd", asdict(task.config)).config == task.config


USER_TASK = """
import torch

class Tiny:
    name = "tiny"

    def build_model(self):
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    def batches(self, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return [(torch.randn(4, 3, generator=g), torch.randint(2, (4,), generator=g))]

    def evaluate(self, model, split):
        x, y = self.batches(split)[0]
        return {"loss": torch.nn.functional.cross_entropy(model(x), y).item()}

task = Tiny()
not_a_task = 3
"""


def test_user_tasks_load_from_a_file(tmp_path):
    path = tmp_path / "mytask.py"
    path.write_text(textwrap.dedent(USER_TASK))
    for spec in (f"{path}:task", f"{path}:Tiny"):
        t = load_user_task(spec)
        assert isinstance(t, Task) and t.name == "tiny"
        assert set(t.evaluate(t.build_model(), "val")) == {"loss"}
    assert load_task(f"{path}:task").name == "tiny"
    with pytest.raises(TypeError, match="not a task"):
        load_user_task(f"{path}:not_a_task")
    with pytest.raises(AttributeError):
        load_user_task(f"{path}:missing")
    with pytest.raises(FileNotFoundError):
        load_user_task(f"{tmp_path}/nope.py:task")
    with pytest.raises(ValueError):
        load_user_task("resnet")
