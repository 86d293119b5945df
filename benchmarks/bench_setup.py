"""What the importance benchmark runs: the models and their sizes, the data, and the code the
package is compared with (a plain forward+backward pass and a reference-style loop).

``bench_importance.py`` measures these; ``gpu_tuning.py`` uses the same models and data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lfssd_tutorial.models import SmallCNN, cifar_resnet18, small_vit


def _vit_with_random_head() -> nn.Module:
    """torchvision initialises the ViT head to zero: logits 0, so the l2 objective's gradient
    (2 f df) vanishes everywhere. A random head makes the untrained model's importances
    non-trivial (timings are the same either way, but the dampening then selects weights)."""
    model = small_vit(10)
    for m in model.heads.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
    return model


# Fixed, small sizes so that the whole run takes minutes on two CPU cores; D_f holds 64
# images (two batches of 32) so that the forget request is not dominated by the fixed,
# per-weight cost of the dampening step. ``gpu``: the sizes used with ``--scale gpu`` (the
# default on CUDA), where the small ones would time kernel launches rather than work.
# batch_size x n_batches images form the benchmark set B (rows 1-3 and 6); the forget
# request uses D = n_full_batches batches and D_f = its first n_forget_batches batches.
CONFIGS: dict[str, dict] = {
    "resnet18": dict(
        label="CIFAR ResNet18 (width 64), 3x32x32 random inputs",
        build=lambda: cifar_resnet18(10, width=64),
        shape=(3, 32, 32),
        batch_size=32,
        n_batches=2,
        n_full_batches=4,
        n_forget_batches=2,
        objectives=("l2", "fisher"),
        forget_objectives=("l2", "fisher"),
        memory_chunks=(4, 8, 16),
        gpu=dict(batch_size=256, n_batches=8, n_full_batches=16, n_forget_batches=4, memory_chunks=(16, 64)),
    ),
    "small_vit": dict(
        label="small ViT (6 layers, dim 192, patch 4), 3x32x32 random inputs",
        build=lambda: _vit_with_random_head(),
        shape=(3, 32, 32),
        batch_size=32,
        n_batches=2,
        n_full_batches=4,
        n_forget_batches=2,
        objectives=("l2", "fisher"),
        forget_objectives=("l2",),
        memory_chunks=(16,),
        gpu=dict(batch_size=256, n_batches=8, n_full_batches=16, n_forget_batches=4, memory_chunks=(16, 64)),
    ),
    "small_cnn": dict(
        label="SmallCNN (width 16) on the bundled 8x8 digits",
        build=lambda: SmallCNN(in_channels=1, num_classes=10, width=16),
        shape=(1, 8, 8),
        batch_size=64,
        n_batches=None,  # the whole digits training set (1347 images, 22 batches)
        n_full_batches=None,
        n_forget_batches=None,  # every training image of digit 8
        objectives=("l2", "fisher"),
        forget_objectives=("l2", "fisher"),
        memory_chunks=(32,),
    ),
}

Batches = list[tuple[torch.Tensor, torch.Tensor]]
SCALES = ("cpu", "gpu")


def sized(name: str, scale: str) -> dict:
    """The configuration of ``name`` at ``scale`` ("cpu": the small sizes, "gpu": its ``gpu`` sizes)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    cfg = {k: v for k, v in CONFIGS[name].items() if k != "gpu"}
    if scale == "gpu":
        cfg.update(CONFIGS[name].get("gpu", {}))
    return cfg


# --------------------------------------------------------------------------- data


def make_data(name: str, cfg: dict, seed: int = 0, forget_images: int | None = None) -> tuple[Batches, Batches, Batches, str]:
    """Return (B, D, D_f) as lists of (inputs, labels) batches and a description.

    ``forget_images``: D_f is the first that many images of the configuration's D_f
    (digits) or of D (synthetic data), instead of the configuration's D_f.
    """
    if name == "small_cnn":
        from torch.utils.data import ConcatDataset, Subset

        from lfssd_tutorial.data import full_class_split, load_digits, make_loader

        data = load_digits()
        split = full_class_split(data, 8)
        forget = split.forget_set(data)
        full = ConcatDataset([split.retain_set(data), forget])
        if forget_images is not None:
            if not 0 < forget_images <= len(forget):
                raise ValueError(f"--forget-images must be in 1..{len(forget)} for {name}, got {forget_images}")
            forget = Subset(forget, range(forget_images))
        D = [(x, y) for x, y in make_loader(full, batch_size=cfg["batch_size"])]
        Df = [(x, y) for x, y in make_loader(forget, batch_size=cfg["batch_size"])]
        n_d, n_f = n_images(D), n_images(Df)
        desc = (
            f"digits training set, D = retain + forget (digit 8), {n_d} images in {len(D)} batches "
            f"of <= {cfg['batch_size']}; D_f = digit 8, {n_f} images in {len(Df)} batches; B = D"
        )
        return D, D, Df, desc
    g = torch.Generator().manual_seed(seed)
    bs = cfg["batch_size"]
    D = [
        (torch.randn(bs, *cfg["shape"], generator=g), torch.randint(0, 10, (bs,), generator=g))
        for _ in range(cfg["n_full_batches"])
    ]
    B = D[: cfg["n_batches"]]
    if forget_images is None:
        Df = D[: cfg["n_forget_batches"]]
        forget_desc = f"D_f = the first {len(Df)} batch(es) of D"
    else:
        if not 0 < forget_images <= n_images(D):
            raise ValueError(f"--forget-images must be in 1..{n_images(D)} for {name}, got {forget_images}")
        x, y = torch.cat([x for x, _ in D])[:forget_images], torch.cat([y for _, y in D])[:forget_images]
        Df = list(zip(x.split(bs), y.split(bs)))
        forget_desc = f"D_f = the first {forget_images} images of D, in {len(Df)} batch(es) of <= {bs}"
    desc = (
        f"synthetic random inputs N(0,1) of shape {tuple(cfg['shape'])} with random labels "
        f"(timing does not depend on the values); B = {len(B)} batches of {bs}; "
        f"D = {len(D)} batches of {bs}; {forget_desc}"
    )
    return B, D, Df, desc


def n_images(batches: Batches) -> int:
    return sum(len(y) for _, y in batches)


def to_device(batches: Batches, device: torch.device) -> Batches:
    return [(x.to(device), y.to(device)) for x, y in batches]


# --------------------------------------------------------------------------- the variants


def _objective(logits: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
    if objective == "fisher":
        return F.cross_entropy(logits, labels)
    return logits.pow(2).sum(dim=1).mean()


def floor_pass(model: nn.Module, batches: Batches, objective: str) -> None:
    """The floor: one plain forward+backward per batch, nothing else (eval mode)."""
    model.eval()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        _objective(model(x), y, objective).backward()
    model.zero_grad(set_to_none=True)


def accumulate_reference(acc: list[torch.Tensor], grads: list[torch.Tensor | None], objective: str) -> None:
    """The reference loop's accumulation of one batch: a clone, a power or abs, an add, per parameter."""
    for imp, g in zip(acc, grads):
        if g is not None:
            imp.data += g.data.clone().pow(2) if objective == "fisher" else g.data.clone().abs()


def reference_loop(model: nn.Module, batches: Batches, objective: str) -> dict[str, torch.Tensor]:
    """A straightforward loop in the style of the authors' code."""
    model.eval()
    importances = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in batches:
        model.zero_grad()
        out = model(x)
        # The same expression as the package's objective, so that the comparison is exact;
        # the authors' torch.norm(out, dim=1).pow(2).mean() is the same function, rounded
        # differently (near-zero importances then differ beyond allclose's atol).
        loss = _objective(out, y, objective)
        loss.backward()
        accumulate_reference(list(importances.values()), [p.grad for p in model.parameters()], objective)
    for imp in importances.values():
        imp.data /= float(len(batches))
    model.zero_grad(set_to_none=True)
    return importances


def batch_gradients(model: nn.Module, batches: Batches, objective: str) -> list[torch.Tensor]:
    """One batch's gradients of the objective, as the accumulation step receives them."""
    model.eval()
    x, y = batches[0]
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(_objective(model(x), y, objective), params))


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict:
    """How far a variant's importances are from the float32 ones (``want``).

    ``rel_l1``: sum |got - want| / sum |want| over all weights; ``max_rel_to_max``: the
    largest |got - want| over the largest |want|.
    """
    num = sum(float((got[k].float() - want[k]).abs().sum()) for k in want)
    den = sum(float(want[k].abs().sum()) for k in want)
    max_abs = max(float((got[k].float() - want[k]).abs().max()) for k in want)
    scale = max(float(want[k].abs().max()) for k in want)
    return {"rel_l1": num / max(den, 1e-30), "max_rel_to_max": max_abs / max(scale, 1e-30)}


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    allclose = all(torch.allclose(a[k], b[k]) for k in a)
    max_abs = max(float((a[k] - b[k]).abs().max()) for k in a)
    scale = max(float(b[k].abs().max()) for k in b)
    return {"allclose": bool(allclose), "max_abs_diff": max_abs, "max_abs_diff_rel_to_max": max_abs / max(scale, 1e-30)}


# What each timed variant runs (written into the results).
VARIANTS = {
    "fwd+bwd (floor)": "per batch: zero_grad(set_to_none=True), forward, the objective's batch mean, backward(); eval mode",
    "importance batch": 'compute_importance(model, batches, objective=..., granularity="batch")',
    "reference loop": "per batch: model.zero_grad(), forward, backward(), then for every parameter "
    "imp.data += p.grad.data.clone().pow(2) (fisher) or .abs() (l2); finally divide by the number of batches",
    "importance sample": 'compute_importance(..., granularity="sample") with the default sample_chunk_size '
    "(16 on a CPU; on a GPU chosen from the free memory, see each model's sample_chunk_size in the JSON)",
    "importance bf16": 'compute_importance(..., autocast_dtype=torch.bfloat16) (forward under torch.autocast, float32 accumulation)',
    "importance channels_last": "compute_importance(model.to(memory_format=torch.channels_last), ..., channels_last=True)",
    "forget cached, in place": "unlearn(model, D_f, method=..., full_importance=Imp_D, inplace=True), after "
    "putting back the model's original weights (restore weights)",
    "forget cached": 'unlearn(model, D_f, method=..., full_importance=Imp_D) (the default: a deep copy of the model is edited)',
    "model copy": "copy.deepcopy(model)",
    "accumulate": "the package's accumulation of one batch's gradients (lfssd_tutorial.importance.accumulate_)",
    "accumulate reference": "imp.data += g.data.clone().pow(2) (fisher) or .abs() (l2), per parameter, for one batch's gradients",
    "forget recomputed": "unlearn(model, D_f, method=..., full_loader=D)",
    "dampening": "select_and_dampen_(model, Imp_D, Imp_Df, alpha, lambda_=1) with alpha = half the largest ratio, "
    "after putting back the model's original weights (restore weights)",
    "restore weights": "torch._foreach_copy_ of the original weights into the edited model's parameters (part of the "
    "in-place request's and the dampening's times, so that every call starts from the same weights)",
}
