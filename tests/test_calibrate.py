"""calibrate_alpha: choosing alpha from predictions only, and unlearn(alpha="auto")."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lfssd_tutorial as lf
from lfssd_tutorial.calibrate import AlphaChoice, default_candidates, retained_to_keep
from lfssd_tutorial.data import make_loader
from lfssd_tutorial.digits import digits_request
from lfssd_tutorial.methods import run_method
from lfssd_tutorial.options import MethodOptions
from lfssd_tutorial.request import retain_sample, sample_loader
from lfssd_tutorial.training import TrainConfig


@pytest.fixture(scope="module")
def small_digits_model():
    """The digits request (forget 8) after a short training, its loaders and 128 retained inputs."""
    torch.set_num_threads(2)
    request = digits_request(8, train_config=TrainConfig(epochs=4, lr=0.05, milestones=(3,)))
    retain = torch.utils.data.Subset(request.split.retain_set(request.data), list(range(0, 1216, 9)))
    loaders = {"full": request.loaders.full, "forget": request.loaders.forget, "retain_sample": make_loader(retain, batch_size=64),
               "split": request.loaders}
    return request.original, loaders


def _linear_case():
    """A 3-class linear model whose right alpha is plain by construction.

    Logits are ``W x`` with ``W = 5 I`` plus ``W[0, 1] = 3``. Imp_D is 1 everywhere; Imp_Df
    is 8 on ``W[0, 0]`` (class 0's own weight), 3 on ``W[1, 1]`` and ``W[2, 2]`` (the
    retained classes' weights) and 1 elsewhere. Forget inputs ``e0 + 0.3 e2`` are class 0;
    dampening ``W[0, 0]`` to 5/8 moves them to class 2. Retained inputs are ``e1`` and
    ``e2``; dampening ``W[1, 1]`` to 5/3 moves ``e1`` to class 0. So any alpha in [3, 8)
    forgets and keeps, any alpha below 3 also breaks half the retained predictions, and
    alpha >= 8 selects nothing.
    """
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, 3.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]))
    full = {"weight": torch.ones(3, 3)}
    forget_imp = torch.ones(3, 3)
    forget_imp[0, 0], forget_imp[1, 1], forget_imp[2, 2] = 8.0, 3.0, 3.0
    forget_x = torch.tensor([1.0, 0.0, 0.3]).repeat(6, 1) + 0.01 * torch.arange(6.0).unsqueeze(1)
    retain_x = torch.cat([torch.tensor([0.0, 1.0, 0.0]).repeat(4, 1), torch.tensor([0.0, 0.0, 1.0]).repeat(4, 1)])
    return model, full, {"weight": forget_imp}, forget_x, retain_x


def _loaders(forget_x, retain_x, labels: str):
    """Loaders of bare inputs, or of (inputs, labels) with correct or shuffled labels."""
    if labels == "none":
        return DataLoader(forget_x, batch_size=4), DataLoader(retain_x, batch_size=4)
    fy = torch.zeros(len(forget_x), dtype=torch.long)
    ry = torch.tensor([1] * 4 + [2] * 4)
    if labels == "shuffled":
        g = torch.Generator().manual_seed(0)
        fy, ry = torch.randint(0, 3, fy.shape, generator=g), ry[torch.randperm(len(ry), generator=g)]
    return DataLoader(TensorDataset(forget_x, fy), batch_size=4), DataLoader(TensorDataset(retain_x, ry), batch_size=4)


def test_the_clearly_right_alpha_is_chosen():
    model, full, forget, fx, rx = _linear_case()
    f_loader, r_loader = _loaders(fx, rx, "none")
    choice = lf.calibrate_alpha(model, full, forget, f_loader, r_loader, candidates=[10, 6, 4, 2.5, 1.1])
    assert isinstance(choice, AlphaChoice) and choice.warning is None
    assert choice.alpha == 6.0  # the largest alpha that forgets and keeps
    by_alpha = {c.alpha: c for c in choice.candidates}
    assert [c.alpha for c in choice.candidates] == [10, 6, 4, 2.5, 1.1]
    assert by_alpha[10].selected == 0 and not by_alpha[10].admissible
    assert by_alpha[6].selected == 1 and by_alpha[6].forget_agreement == 0.0 and by_alpha[6].retain_agreement == 1.0
    assert by_alpha[4].selected == 1
    assert by_alpha[2.5].selected == 3 and by_alpha[2.5].retain_agreement == 0.5 and not by_alpha[2.5].admissible
    assert choice.max_ratio == pytest.approx(8.0) and choice.forget_concentration == 1.0
    assert "smallest edit" in choice.reason and len(choice.rows()) == 5 and choice.lambda_ == 1.0


def test_retained_inputs_of_a_forgotten_class_are_set_aside():
    # one retained input looks like D_f, so the original assigns it to class 0. With class 0 gone
    # from the retained data (1 input against 8 for each other class) the retrained model would
    # not predict class 0 for it either: it must change, and it is left out of the agreement.
    model, full, forget, fx, rx = _linear_case()
    rx = torch.cat([rx, rx, fx[:1]])
    choice = lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, "none"), candidates=[10, 6, 2.5])
    assert (choice.forget_class, choice.set_aside) == (0, 1) and choice.warning is None
    assert choice.alpha == 6.0 and choice.candidates[1].retain_agreement == 1.0
    assert choice.candidates[2].retain_agreement == 0.5  # e1 moves to class 0 and counts
    assert "less the 1 of class 0, which must change" in choice.reason


def test_retained_inputs_of_a_class_still_present_count():
    # sub-class forgetting: class 0 stays common in the retained data (4 inputs, as many as each
    # other class), so its retained inputs are kept and must not change
    model, full, forget, fx, rx = _linear_case()
    steady = torch.tensor([2.0, 0.0, 0.0]).repeat(4, 1)  # still class 0 after any edit here
    choice = lf.calibrate_alpha(model, full, forget, *_loaders(fx, torch.cat([rx, steady]), "none"),
                                candidates=[10, 6])
    assert choice.set_aside == 0 and choice.alpha == 6.0 and choice.candidates[1].retain_agreement == 1.0
    like_forget = fx[:4]  # these move with D_f: 4 of 12 retained predictions change
    with pytest.warns(lf.CalibrationWarning, match="no candidate kept"):
        moved = lf.calibrate_alpha(model, full, forget, *_loaders(fx, torch.cat([rx, like_forget]), "none"),
                                   candidates=[10, 6])
    assert moved.set_aside == 0 and moved.candidates[1].retain_agreement == pytest.approx(8 / 12)


def test_retained_to_keep():
    preds = torch.tensor([1] * 10 + [2] * 10 + [3] * 5 + [0] * 2)
    assert retained_to_keep(preds, 0).tolist() == [True] * 25 + [False] * 2  # 2 < 10 / 4
    assert retained_to_keep(preds, 3).all()  # 5 >= 10 / 4: half a class, as a paired sub-class
    assert retained_to_keep(torch.zeros(5, dtype=torch.long), 0).all()  # nothing else to compare with
    assert retained_to_keep(torch.tensor([1, 1, 2, 2]), 0).all()  # absent class: nothing to set aside


def _lambda_case():
    """A 3-class linear model on which only one (alpha, lambda) forgets and keeps.

    Logits are ``W x`` with ``W = 5 I`` plus ``W[0, 1] = 3``. Imp_D is 1 everywhere; Imp_Df
    is 3 on ``W[0, 0]`` and ``W[1, 1]`` and 1 elsewhere, so alpha = 2 selects those two
    weights and multiplies both by ``beta = min(lambda / 3, 1)``. Forget inputs
    ``e0 + 0.8 e2`` (class 0: logits 5 and 4) move to class 2 iff ``5 beta < 4``, i.e.
    ``lambda < 2.4``; the retained input ``e1`` (class 1: logits 5 and 3) stays iff
    ``5 beta > 3``, i.e. ``lambda > 1.8``. Of lambda in {0.5, 1, 2, 4}, only 2 does both.
    """
    model, full, _, _, retain_x = _linear_case()
    forget_imp = torch.ones(3, 3)
    forget_imp[0, 0], forget_imp[1, 1] = 3.0, 3.0
    forget_x = torch.tensor([1.0, 0.0, 0.8]).repeat(6, 1)
    return model, full, {"weight": forget_imp}, forget_x, retain_x


def test_the_clearly_right_alpha_and_lambda_are_chosen():
    model, full, forget, fx, rx = _lambda_case()
    loaders = _loaders(fx, rx, "none")
    choice = lf.calibrate_alpha(model, full, forget, *loaders, lambda_=[0.5, 1.0, 2.0, 4.0], candidates=[5.0, 2.0])
    assert (choice.alpha, choice.lambda_) == (2.0, 2.0) and choice.warning is None
    assert [(c.alpha, c.lambda_) for c in choice.candidates] == [(a, lam) for lam in (0.5, 1, 2, 4) for a in (5, 2)]
    by_pair = {(c.alpha, c.lambda_): c for c in choice.candidates}
    for lam in (0.5, 1.0):  # forgets, but breaks the retained e1
        assert by_pair[(2.0, lam)].forget_agreement == 0.0 and by_pair[(2.0, lam)].retain_agreement == 0.5
        assert not by_pair[(2.0, lam)].admissible
    assert by_pair[(2.0, 2.0)].forget_agreement == 0.0 and by_pair[(2.0, 2.0)].retain_agreement == 1.0
    assert by_pair[(2.0, 4.0)].admissible and by_pair[(2.0, 4.0)].forget_agreement == 1.0  # beta = 1: no change
    assert all(by_pair[(5.0, lam)].selected == 0 for lam in (0.5, 1, 2, 4))
    assert "lambda=2" in str(choice)
    # with lambda = 1 alone there is no good candidate, and the calibration says so
    with pytest.warns(lf.CalibrationWarning, match="no candidate kept"):
        alone = lf.calibrate_alpha(model, full, forget, *loaders, candidates=[5.0, 2.0])
    assert alone.lambda_ == 1.0 and alone.rows() == [r for r in choice.rows() if r["lambda_"] == 1.0]


def test_default_candidates_double_the_selection():
    model, full, forget, fx, rx = _linear_case()
    # ratios 8, 3, 3, then six 1s: alpha 3 selects one weight, alpha 1 three (up to half of 9)
    assert default_candidates(full, forget) == [3.0, 1.0]
    choice = lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, "none"))
    assert [c.alpha for c in choice.candidates] == [3.0, 1.0] and [c.selected for c in choice.candidates] == [1, 3]
    assert choice.alpha == 3.0
    ramp = {"w": torch.ones(100)}, {"w": torch.arange(100.0)}
    alphas = default_candidates(*ramp)
    assert alphas == [98.0, 97.0, 95.0, 91.0, 83.0, 67.0]  # select 1, 2, 4, 8, 16, 32 weights
    # growth sqrt(2): int(sqrt(2)**k) = 1, 1, 2, 2, 4, 5, 8, 11, 16, 22, 32, 45 weights, repeats dropped
    finer = default_candidates(*ramp, growth=2 ** 0.5)
    assert finer == [99.0 - n for n in (1, 2, 4, 5, 8, 11, 16, 22, 32, 45)]
    with pytest.raises(ValueError, match="growth must be > 1"):
        default_candidates(*ramp, growth=1.0)
    with pytest.raises(ValueError, match="no weight has a positive"):
        default_candidates({"w": torch.ones(3)}, {"w": torch.zeros(3)})


@pytest.mark.parametrize("labels", ["correct", "shuffled"])
@pytest.mark.parametrize("case", [_linear_case, _lambda_case])
def test_labels_are_ignored(labels, case):
    model, full, forget, fx, rx = case()
    options = dict(candidates=[10, 6, 4, 2.5, 2, 1.1], lambda_=[0.5, 1, 2, 4])
    bare = lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, "none"), **options)
    labelled = lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, labels), **options)
    assert (labelled.alpha, labelled.lambda_) == (bare.alpha, bare.lambda_)
    assert labelled.rows() == bare.rows()


def test_the_model_is_left_unchanged():
    model, full, forget, fx, rx = _linear_case()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, "none"), candidates=[6, 2.5], lambda_=(0.5, 2))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_bad_input_gets_a_clear_error():
    model, full, forget, fx, rx = _linear_case()
    f_loader, r_loader = _loaders(fx, rx, "none")
    with pytest.raises(ValueError, match="forget_loader yielded no inputs"):
        lf.calibrate_alpha(model, full, forget, [], r_loader)
    with pytest.raises(ValueError, match="retain_loader yielded no inputs"):
        lf.calibrate_alpha(model, full, forget, f_loader, DataLoader(torch.zeros(0, 3), batch_size=4))
    other = nn.Linear(3, 4, bias=False)
    with pytest.raises(ValueError, match="shape"):
        lf.calibrate_alpha(other, full, forget, f_loader, r_loader)
    with pytest.raises(ValueError, match="none of the 2 candidate alphas selects a weight"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, candidates=[8, 20])
    with pytest.raises(ValueError, match="candidates is empty"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, candidates=[])
    with pytest.raises(ValueError, match="alpha"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, candidates=[6, -1])
    with pytest.raises(ValueError, match="retain_tolerance"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, retain_tolerance=2)
    with pytest.raises(ValueError, match="lambda_ is an empty sequence"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, lambda_=[])
    with pytest.raises(ValueError, match="lambda_"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, lambda_=[1.0, -0.5])
    with pytest.raises(ValueError, match="lambda_ must be a number"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, lambda_="1")
    with pytest.raises(ValueError, match="growth"):
        lf.calibrate_alpha(model, full, forget, f_loader, r_loader, growth=0.5)


def test_a_forget_set_spread_over_classes_is_refused():
    # random forgetting: the original assigns D_f to many classes
    model, full, forget, fx, rx = _linear_case()
    spread = torch.eye(3).repeat(2, 1)
    with pytest.raises(ValueError, match="random forgetting"):
        lf.calibrate_alpha(model, full, forget, DataLoader(spread, batch_size=4), DataLoader(rx, batch_size=4))


def test_a_warning_when_no_candidate_keeps_the_retained_predictions():
    model, full, forget, fx, rx = _linear_case()
    with pytest.warns(lf.CalibrationWarning, match="no candidate kept"):
        choice = lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, "none"), candidates=[2.5, 1.1])
    assert choice.alpha == 2.5 and "no candidate kept" in choice.warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, "none"), candidates=[2.5, 1.1], warn=False)
    assert quiet.warning == choice.warning


def test_a_warning_when_nothing_admissible_forgets():
    # the high ratio sits on W[2, 0], which is 0: selecting it changes nothing, and D_f is not forgotten
    model, full, forget, fx, rx = _linear_case()
    forget["weight"][0, 0], forget["weight"][2, 0] = 1.0, 8.0
    with pytest.warns(lf.CalibrationWarning, match="cannot forget"):
        choice = lf.calibrate_alpha(model, full, forget, *_loaders(fx, rx, "none"), candidates=[6])
    assert choice.alpha == 6.0 and choice.candidates[0].admissible and choice.candidates[0].forget_agreement == 1.0


def test_unlearn_auto_runs_the_calibration(small_digits_model):
    model, loaders = small_digits_model
    full = lf.compute_importance(model, loaders["full"], objective="l2")
    forget = lf.compute_importance(model, loaders["forget"], objective="l2")
    direct = lf.calibrate_alpha(model, full, forget, loaders["forget"], loaders["retain_sample"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, report = lf.unlearn(model, loaders["forget"], method="lfssd", full_importance=full, alpha="auto",
                                   retain_loader=loaders["retain_sample"])
    assert report.calibration is not None and report.calibration.alpha == direct.alpha == report.alpha
    assert report.calibration.rows() == direct.rows()
    expected, _ = lf.unlearn(model, loaders["forget"], method="lfssd", full_importance=full, alpha=direct.alpha)
    for (k, a), b in zip(unlearned.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), k
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="needs retain_loader"):
        lf.unlearn(model, loaders["forget"], full_importance=full, alpha="auto")
    with pytest.raises(ValueError, match="only used with"):
        lf.unlearn(model, loaders["forget"], full_importance=full, alpha=5.0, retain_loader=loaders["retain_sample"])
    with pytest.raises(ValueError, match="alpha"):
        lf.unlearn(model, loaders["forget"], full_importance=full, alpha="best", retain_loader=loaders["retain_sample"])
    with pytest.raises(ValueError, match='only used with alpha="auto"'):
        lf.unlearn(model, loaders["forget"], full_importance=full, alpha=5.0, lambda_=[0.5, 1.0])


def test_unlearn_auto_chooses_lambda_and_uses_it(small_digits_model):
    model, loaders = small_digits_model
    full = lf.compute_importance(model, loaders["full"], objective="l2")
    forget = lf.compute_importance(model, loaders["forget"], objective="l2")
    lambdas = (0.5, 1.0, 2.0)
    direct = lf.calibrate_alpha(model, full, forget, loaders["forget"], loaders["retain_sample"], lambda_=lambdas,
                                warn=False)
    assert {c.lambda_ for c in direct.candidates} == set(lambdas)
    unlearned, report = lf.unlearn(model, loaders["forget"], method="lfssd", full_importance=full, alpha="auto",
                                   lambda_=lambdas, retain_loader=loaders["retain_sample"], warn=False)
    assert (report.alpha, report.lambda_) == (direct.alpha, direct.lambda_)
    assert report.calibration.rows() == direct.rows()
    expected, _ = lf.unlearn(model, loaders["forget"], method="lfssd", full_importance=full, alpha=direct.alpha,
                             lambda_=direct.lambda_, warn=False)
    for (k, a), b in zip(unlearned.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lf.unlearn(model, loaders["forget"], method="ssd", full_importance=lf.compute_importance(model, loaders["full"], objective="fisher"),
                   alpha="auto", retain_loader=loaders["retain_sample"], warn=False)


def test_auto_calibrates_on_a_forget_sample_with_its_growth_and_lambdas(small_digits_model):
    """unlearn's calibration_forget_loader and growth, and run_method's calibration options,
    reach calibrate_alpha unchanged; the importances still use all of D_f."""
    model, loaders = small_digits_model
    full = lf.compute_importance(model, loaders["full"], objective="l2")
    forget = lf.compute_importance(model, loaders["forget"], objective="l2")
    sample = sample_loader(loaders["forget"], 40, seed=3)
    assert len(sample.dataset) == 40 < len(loaders["forget"].dataset)
    lambdas, growth = (0.5, 1.0, 2.0), 2 ** 0.5
    direct = lf.calibrate_alpha(model, full, forget, sample, loaders["retain_sample"], lambda_=lambdas, growth=growth,
                                warn=False)
    assert direct.rows() != lf.calibrate_alpha(model, full, forget, loaders["forget"], loaders["retain_sample"],
                                               lambda_=lambdas, growth=growth, warn=False).rows()
    _, report = lf.unlearn(model, loaders["forget"], method="lfssd", full_importance=full, alpha="auto", lambda_=lambdas,
                           growth=growth, retain_loader=loaders["retain_sample"], calibration_forget_loader=sample,
                           warn=False)
    assert report.calibration.rows() == direct.rows()
    split = loaders["split"]
    options = MethodOptions(alpha="auto", calibration_lambdas=lambdas, calibration_growth=growth,
                            calibration_forget_sample=40, full_importance=full, seed=3)
    result = run_method("lfssd", model, split, options)
    by_hand = lf.calibrate_alpha(model, full, forget, sample_loader(split.forget, 40, seed=3), retain_sample(split, 256, seed=3),
                                 lambda_=lambdas, growth=growth, warn=False)
    assert result.report.calibration.rows() == by_hand.rows()
    assert (result.report.alpha, result.report.lambda_) == (by_hand.alpha, by_hand.lambda_)
    with pytest.raises(ValueError, match='only used with alpha="auto"'):
        run_method("lfssd", model, split, MethodOptions(alpha=5.0, calibration_lambdas=lambdas, full_importance=full))
    with pytest.raises(ValueError, match='only used with alpha="auto"'):
        run_method("lfssd", model, split, MethodOptions(alpha=5.0, calibration_growth=growth, full_importance=full))
    with pytest.raises(ValueError, match='only used with alpha="auto"'):
        lf.unlearn(model, loaders["forget"], full_importance=full, alpha=5.0, calibration_forget_loader=sample)
    with pytest.raises(ValueError, match='only used with alpha="auto"'):
        lf.unlearn(model, loaders["forget"], full_importance=full, alpha=5.0, growth=growth)
