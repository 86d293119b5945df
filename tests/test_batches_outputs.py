"""Batches and model outputs of every kind give the importance of the plain tensor model."""

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch

from lfssd_tutorial import calibrate_alpha, compute_importance, unlearn
from lfssd_tutorial.batches import as_logits, split_batch
from lfssd_tutorial.models import SmallCNN

from .conftest import make_batches, make_cnn

GRANULARITIES = ["batch", "sample"]
OBJECTIVES = ["l2", "fisher", "true_fisher"]


class HFOutput(OrderedDict):
    """Like a Hugging Face ModelOutput: a mapping whose entries are attributes too."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def wrap_output(logits, kind):
    aux = logits.detach().sum()
    return {
        "tensor": lambda: logits,
        "attribute": lambda: SimpleNamespace(logits=logits, hidden_states=None),
        "model_output": lambda: HFOutput(loss=aux, logits=logits),
        "dict": lambda: {"logits": logits, "aux": aux},
        "tuple": lambda: (logits, aux),
        "list": lambda: [logits, aux],
    }[kind]()


class KeywordCNN(SmallCNN):
    """make_cnn()'s network, called as model(pixel_values=...) or model(x), returning ``kind`` outputs."""

    def __init__(self, kind="tensor", seed=0):
        super().__init__(in_channels=1, num_classes=5, width=4)
        self.load_state_dict(make_cnn(seed).state_dict())
        self.kind = kind

    def forward(self, pixel_values):
        return wrap_output(super().forward(pixel_values), self.kind)


def as_batches(batches, kind):
    """The (x, y) batches of conftest as batches of ``kind``."""
    return [{
        "tensor": lambda: x,
        "tuple": lambda: (x, y),
        "triple": lambda: [x, y // 2, y],  # (inputs, coarse, fine): the labels are the last element
        "labels": lambda: {"pixel_values": x, "labels": y},
        "label": lambda: {"label": y, "pixel_values": x},
        "unlabelled": lambda: {"pixel_values": x},
    }[kind]() for x, y in batches]


LABELLED = {"tensor": False, "tuple": True, "triple": True, "labels": True, "label": True, "unlabelled": False}


def assert_same(got, want):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)


def reference(objective, granularity, batches=None):
    return compute_importance(make_cnn(), batches or make_batches(), objective=objective, granularity=granularity,
                              sample_chunk_size=5)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("kind", ["attribute", "model_output", "dict", "tuple", "list"])
def test_every_output_kind(kind, objective, granularity):
    got = compute_importance(KeywordCNN(kind), make_batches(), objective=objective, granularity=granularity, sample_chunk_size=5)
    assert_same(got, reference(objective, granularity))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("kind", list(LABELLED))
def test_every_batch_kind(kind, objective, granularity):
    batches = as_batches(make_batches(), kind)
    if objective == "fisher" and not LABELLED[kind]:
        with pytest.raises(ValueError, match="needs labels"):
            compute_importance(KeywordCNN(), batches, objective=objective, granularity=granularity)
        return
    got = compute_importance(KeywordCNN(), batches, objective=objective, granularity=granularity, sample_chunk_size=5)
    assert_same(got, reference(objective, granularity))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_hugging_face_style_model_and_batches(granularity):
    """``{"pixel_values", "labels"}`` batches into a model returning a ModelOutput, every objective."""
    batches = as_batches(make_batches(), "labels")
    for objective in OBJECTIVES:
        got = compute_importance(KeywordCNN("model_output"), batches, objective=objective, granularity=granularity,
                                 sample_chunk_size=5)
        assert_same(got, reference(objective, granularity))


def test_the_model_is_given_the_mapping_as_keywords():
    seen = []

    class Spy(KeywordCNN):
        def forward(self, pixel_values, attention_mask=None):
            seen.append(attention_mask is not None)
            return super().forward(pixel_values)

    x, y = make_batches()[0]
    compute_importance(Spy(), [{"pixel_values": x, "attention_mask": torch.ones(len(x)), "labels": y}], objective="fisher")
    assert seen == [True]  # the mask went in by name, the labels did not (forward takes no labels)


class Regression(torch.nn.Module):
    """make_cnn()'s features and a 1-output head: output (B, 1), or (B,) with ``squeeze``."""

    def __init__(self, squeeze):
        super().__init__()
        torch.manual_seed(3)
        self.net = SmallCNN(in_channels=1, num_classes=1, width=4)
        self.squeeze = squeeze

    def forward(self, x):
        out = self.net(x)
        return out.squeeze(1) if self.squeeze else out


def naive_l2(model, batches, granularity):
    """|gradient| of the batch-mean (or each sample's) squared output, by plain backward passes."""
    model.eval()
    parts = [b for b in batches] if granularity == "batch" else [x[i : i + 1] for x in batches for i in range(len(x))]
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x in parts:
        model.zero_grad()
        out = model(x)
        (out.reshape(len(x), -1) ** 2).sum(1).mean().backward()
        for n, p in model.named_parameters():
            acc[n] += p.grad.abs()
    return {n: a / len(parts) for n, a in acc.items()}


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_regression_output_with_l2(granularity):
    inputs = [x for x, _ in make_batches()]
    flat = compute_importance(Regression(squeeze=True), inputs, objective="l2", granularity=granularity, sample_chunk_size=5)
    column = compute_importance(Regression(squeeze=False), inputs, objective="l2", granularity=granularity, sample_chunk_size=5)
    assert_same(flat, column)
    assert_same(flat, naive_l2(Regression(squeeze=True), inputs, granularity))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_sequence_logits_with_l2(granularity):
    """Logits (B, T, V): the l2 objective sums over T and V, as for the same numbers laid out (B, T*V)."""

    class Sequence(SmallCNN):
        def forward(self, x):
            return super().forward(x).view(len(x), 3, 4)

    flat = make_cnn(num_classes=12)
    sequence = Sequence(in_channels=1, num_classes=12, width=4)
    sequence.load_state_dict(flat.state_dict())
    inputs = [x for x, _ in make_batches()]
    got = compute_importance(sequence, inputs, objective="l2", granularity=granularity, sample_chunk_size=5)
    assert_same(got, compute_importance(flat, inputs, objective="l2", granularity=granularity, sample_chunk_size=5))
    assert_same(got, naive_l2(sequence, inputs, granularity))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("objective", ["fisher", "true_fisher"])
def test_fisher_needs_class_logits(objective, granularity):
    # the shape of a batch of 8, or of one sample where the estimator runs the model sample by sample
    with pytest.raises(ValueError, match=r"needs class logits of shape \(batch, classes\).*returned shape \((8|1),\)"):
        compute_importance(Regression(squeeze=True), make_batches(), objective=objective, granularity=granularity)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_an_output_of_another_kind_is_named(granularity):
    class Strange(KeywordCNN):
        def forward(self, pixel_values):
            return {"scores": super().forward(pixel_values)}

    with pytest.raises(TypeError, match="returned dict.*forward="):
        compute_importance(Strange(), make_batches(), objective="l2", granularity=granularity)
    with pytest.raises(TypeError, match="returned frozenset"):
        as_logits(frozenset())


def test_batches_of_another_kind_are_named():
    x, y = make_batches()[0]
    with pytest.raises(TypeError, match="yielded str.*forward="):
        compute_importance(make_cnn(), ["images"], objective="l2")
    with pytest.raises(TypeError, match="entry 'ids' must be a tensor.*got list"):
        compute_importance(KeywordCNN(), [{"pixel_values": x, "ids": [1, 2]}], objective="l2")
    with pytest.raises(ValueError, match="both 'labels' and 'label'"):
        split_batch({"pixel_values": x, "labels": y, "label": y}, need_labels=True)
    with pytest.raises(ValueError, match="needs labels.*mapping without"):
        compute_importance(KeywordCNN(), [{"pixel_values": x}], objective="fisher")


class TwoInputs(torch.nn.Module):
    """make_cnn()'s network behind a call no batch convention covers: model(scale, images)."""

    def __init__(self):
        super().__init__()
        self.net = make_cnn()

    def forward(self, scale, images):
        return self.net(images * scale)


def forward_two_inputs(model, batch):
    """Batches ``(labels, images)``: labels first, and a scale the model takes before the images."""
    labels, images = batch
    return model(2.0, images / 2.0), labels


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_forward_hook(objective, granularity):
    batches = [(y, x) for x, y in make_batches()]
    got = compute_importance(TwoInputs(), batches, objective=objective, granularity=granularity, sample_chunk_size=5,
                             forward=forward_two_inputs)
    want = reference(objective, granularity)
    assert_same({n.removeprefix("net."): v for n, v in got.items()}, want)


def test_forward_hook_results_are_checked():
    batches = make_batches()
    with pytest.raises(TypeError, match=r"must return \(logits, labels or None\)"):
        compute_importance(make_cnn(), batches, objective="l2", forward=lambda m, b: m(b[0]))
    with pytest.raises(ValueError, match="needs labels.*returned None"):
        compute_importance(make_cnn(), batches, objective="fisher", forward=lambda m, b: (m(b[0]), None))
    with pytest.raises(ValueError, match="8 rows of logits for 3 labels"):
        compute_importance(make_cnn(), batches, objective="fisher", forward=lambda m, b: (m(b[0]), b[1][:3]))


def test_per_sample_needs_a_torch_func_model():
    class Branching(KeywordCNN):
        def forward(self, pixel_values):
            out = super().forward(pixel_values)
            return out if out.sum() > 0 else -out  # Python control flow on a tensor's value

    class InPlace(KeywordCNN):
        def forward(self, pixel_values):
            total = torch.zeros(5)
            total += super().forward(pixel_values)[0]  # an in-place update of a tensor the model made
            return total.expand(len(pixel_values), 5)

    batches = make_batches()
    for model in (Branching(), InPlace()):
        compute_importance(model, batches, objective="l2", granularity="batch")  # the batch estimator runs it
        with pytest.raises(RuntimeError, match='(?s)torch.func-compatible model.*granularity="batch"'):
            compute_importance(model, batches, objective="l2", granularity="sample")


def test_unlearn_and_calibrate_take_every_kind():
    """unlearn (and alpha="auto"'s calibration) on mapping batches and ModelOutputs: the plain model's result."""
    full = make_batches()
    forget = full[-1:]
    hf_full, hf_forget = as_batches(full, "labels"), as_batches(forget, "unlabelled")
    plain, report = unlearn(make_cnn(), [x for x, _ in forget], full_loader=full, method="lfssd", alpha=1.5, warn=False)
    edited, hf_report = unlearn(KeywordCNN("model_output"), hf_forget, full_loader=hf_full, method="lfssd", alpha=1.5, warn=False)
    assert report.total_selected > 0 and hf_report.total_selected == report.total_selected
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(edited.state_dict()[name], value)

    full_imp = compute_importance(make_cnn(), full, objective="l2")
    forget_imp = compute_importance(make_cnn(), forget, objective="l2")
    options = dict(min_concentration=0.0, warn=False)
    want = calibrate_alpha(make_cnn(), full_imp, forget_imp, forget, full[:1], **options)
    got = calibrate_alpha(KeywordCNN("dict"), full_imp, forget_imp, hf_forget, as_batches(full[:1], "label"), **options)
    hooked = calibrate_alpha(TwoInputs(), {f"net.{n}": v for n, v in full_imp.items()},
                             {f"net.{n}": v for n, v in forget_imp.items()}, [(y, x) for x, y in forget],
                             [(y, x) for x, y in full[:1]], forward=forward_two_inputs, **options)
    assert got.rows() == want.rows() == hooked.rows()


def test_predictions_take_every_kind():
    """predict (behind every accuracy of the package) on mapping batches and ModelOutputs, and with forward=."""
    from lfssd_tutorial.training import evaluate_accuracy, predict

    batches = make_batches()
    logits, labels = predict(make_cnn(), batches)
    for model, data, forward in [(KeywordCNN("model_output"), as_batches(batches, "labels"), None),
                                 (KeywordCNN("tuple"), as_batches(batches, "label"), None),
                                 (TwoInputs(), [(y, x) for x, y in batches], forward_two_inputs)]:
        got_logits, got_labels = predict(model, data, forward=forward)
        torch.testing.assert_close(got_logits, logits)
        assert torch.equal(got_labels, labels)
    assert predict(KeywordCNN("dict"), as_batches(batches, "unlabelled"))[1] is None
    assert evaluate_accuracy(KeywordCNN("list"), as_batches(batches, "labels")) == evaluate_accuracy(make_cnn(), batches)
