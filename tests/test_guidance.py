"""PRSS's pure functions and hooks: memorization detection, Prompt Re-anchoring, the PRSS loop (SS: test_ss.py)."""

from types import SimpleNamespace

import pytest
import torch

from prss_mini.diffusion import cfg_hook, classifier_free_guidance, predict_noise
from prss_mini.evaluate import CountingUNet
from prss_mini.guidance import build_hook, pr_only, prss
from prss_mini.guidance.detect import detection_score, first_step_magnitude, magnitude_trace, noise_magnitude
from prss_mini.guidance.paraphrase import paraphrases
from prss_mini.guidance.pr import prompt_reanchor, reanchor_strength
from prss_mini.guidance.ss import search_one_sample

S, LAMBDA_PR, TAU = 5.0, 3.0, 5.0


def predictions(seed=0, B=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, 4, 4, generator=g) for _ in range(3)]  # eps_u, eps_p, eps_ss


def with_magnitude(eps_u, direction, m):
    """eps_ss = eps_u + a direction scaled so that ||eps_ss - eps_u|| = m for every sample."""
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return eps_u + torch.as_tensor(m, dtype=eps_u.dtype).view(-1, 1, 1, 1) * direction


def test_noise_magnitude_is_the_per_sample_l2_norm():
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    a[0, 0, 0, 0], a[1] = 3.0, 1.0
    assert torch.allclose(noise_magnitude(a, b), torch.tensor([3.0, 48 ** 0.5]))


def test_pr_is_plain_cfg_below_lambda_pr():
    eps_u, eps_p, d = predictions()
    eps_ss = with_magnitude(eps_u, d, [1.0, 2.0, 2.9])
    out = prompt_reanchor(eps_u, eps_p, eps_ss, S, LAMBDA_PR, TAU)
    assert torch.allclose(out, classifier_free_guidance(eps_u, eps_ss, S))


def test_pr_equals_cfg_on_the_target_at_lambda_pr():
    """At m_t = lambda_PR the ramp starts: s_pr = 1, and eps_p + (eps_ss - eps_p) + (s - 1)(eps_ss - eps_u) is CFG."""
    eps_u, eps_p, d = predictions()
    eps_ss = with_magnitude(eps_u, d, [LAMBDA_PR + 1e-4] * 3)
    out = prompt_reanchor(eps_u, eps_p, eps_ss, S, LAMBDA_PR, TAU)
    assert torch.allclose(out, classifier_free_guidance(eps_u, eps_ss, S), atol=1e-3)


def test_pr_is_full_reanchoring_from_tau_on():
    eps_u, eps_p, d = predictions()
    eps_ss = with_magnitude(eps_u, d, [TAU, TAU + 1, 10 * TAU])
    out = prompt_reanchor(eps_u, eps_p, eps_ss, S, LAMBDA_PR, TAU)
    assert torch.allclose(out, eps_p + S * (eps_ss - eps_p), atol=1e-5)


def test_pr_ramp_is_linear_between_lambda_pr_and_tau():
    """s_pr = 1 at m_t = lambda_PR = 3, s = 5 at tau = 5, linear between: 2 at 3.5, 3 at 4, 4 at 4.5; capped at s."""
    assert reanchor_strength(torch.tensor([3.0, 3.5, 4.0, 4.5, 5.0, 7.0]), S, LAMBDA_PR, TAU).tolist() == \
        pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    eps_u, eps_p, d = predictions()
    eps_ss = with_magnitude(eps_u, d, [3.5, 4.0, 4.5])
    s_pr = torch.tensor([2.0, 3.0, 4.0]).view(-1, 1, 1, 1)                   # by hand, from the line above
    expected = eps_p + s_pr * (eps_ss - eps_p) + (S - s_pr) * (eps_ss - eps_u)
    assert torch.allclose(prompt_reanchor(eps_u, eps_p, eps_ss, S, LAMBDA_PR, TAU), expected, atol=1e-5)


def test_pr_decides_per_sample():
    eps_u, eps_p, d = predictions(B=2)
    eps_ss = with_magnitude(eps_u, d, [1.0, 10 * TAU])
    out = prompt_reanchor(eps_u, eps_p, eps_ss, S, LAMBDA_PR, TAU)
    assert torch.allclose(out[0], classifier_free_guidance(eps_u, eps_ss, S)[0])
    assert torch.allclose(out[1], (eps_p + S * (eps_ss - eps_p))[1], atol=1e-5)


@pytest.mark.parametrize("lambda_pr, tau", [(3.0, 3.0), (3.0, 2.0), (-1.0, 2.0)])
def test_pr_rejects_bad_thresholds(lambda_pr, tau):
    eps_u, eps_p, eps_ss = predictions()
    with pytest.raises(ValueError, match="tau|>= 0"):
        prompt_reanchor(eps_u, eps_p, eps_ss, S, lambda_pr, tau)


def test_tau_factor_moves_tau_to_lambda_pr_plus_factor_times_the_ramp():
    """The evaluation's sweep point tau_factor = 4: lambda_pr 3, tau 5 -> tau = 3 + 4 (5 - 3) = 11, lambda_pr kept;
    from the calibrated thresholds as from explicit ones."""
    assert {"tau_factor": 4} in prss.SWEEP
    calibrated = SimpleNamespace(thresholds={"lambda_pr": 3.0, "tau": 5.0})
    assert prss.reanchor_thresholds(calibrated, None, None, tau_factor=4) == (3.0, 11.0)
    assert prss.reanchor_thresholds(SimpleNamespace(thresholds=None), 3.0, 5.0, tau_factor=4) == (3.0, 11.0)


@pytest.mark.parametrize("tau_factor", [0, -1.0])
def test_tau_factor_must_be_positive(tau_factor):
    with pytest.raises(ValueError, match=f"tau_factor must be > 0, got {tau_factor}"):
        prss.reanchor_thresholds(SimpleNamespace(thresholds=None), 3.0, 5.0, tau_factor)


def test_magnitude_trace_is_the_norm_of_cond_minus_uncond_at_every_step_of_a_cfg_run(random_pipe, record_steps):
    """m_t = ||eps(x_t, e_p) - eps(x_t, e_0)||_2 over each sample's whole tensor, at the x_t that plain CFG (at the
    run's scale) visits, step by step: computed here from the recorded trajectory, one UNet call per branch."""
    pipe, e_p = random_pipe, random_pipe.encode(["a red circle in the top left"])
    x_T = pipe.initial_noise(2, seed=5)
    _, steps = record_steps(pipe, cfg_hook(pipe.unet, e_p, pipe.empty, pipe.config.guidance_scale), x_T, 5)
    by_hand = []
    for x_t, t, _ in steps:
        t_in = torch.full((2,), t, dtype=torch.long)
        diff = pipe.unet(x_t, t_in, e_p.expand(2, -1, -1)) - pipe.unet(x_t, t_in, pipe.empty.expand(2, -1, -1))
        by_hand.append([float(d.pow(2).sum().sqrt()) for d in diff])              # one value per sample
    trace = magnitude_trace(pipe, e_p, x_T, 5)                                    # (B, steps)
    assert trace.shape == (2, 5)
    assert trace.T.tolist() == [pytest.approx(m, rel=1e-4) for m in by_hand]


def test_detection_score_averages_the_first_step_magnitude_over_the_x_T_of_every_seed(random_pipe):
    """Score of a prompt = the mean of its first-step magnitude over num_images x_T from each seed (2 x 2 here)."""
    pipe, prompts = random_pipe, ["a red circle in the top left", "a blue square in the bottom right"]
    m = {seed: first_step_magnitude(pipe, pipe.encode(prompts), pipe.initial_noise(2, seed)).tolist()
         for seed in (0, 1)}                                                       # seed -> (P, 2)
    by_hand = [(m[0][p][0] + m[0][p][1] + m[1][p][0] + m[1][p][1]) / 4 for p in range(2)]
    assert detection_score(pipe, prompts, seeds=(0, 1), num_images=2).tolist() == pytest.approx(by_hand, rel=1e-5)
    assert by_hand[0] != pytest.approx(by_hand[1])                              # two prompts, two scores


def test_unknown_method_is_a_clear_error(random_pipe):
    with pytest.raises(ValueError, match="unknown method 'nope'.*prss"):
        build_hook("nope", random_pipe, "a red circle", torch.zeros(1, 3, 16, 16), 5.0)


def test_prss_without_a_trigger_gives_the_cfg_images(random_pipe):
    prompt = "a red circle in the top left"
    kw = dict(num_images=2, seed=3, num_inference_steps=5)
    cfg = random_pipe.generate(prompt, method="cfg", **kw)
    prss, info = random_pipe.generate(prompt, method="prss", lambda_ss=1e9, lambda_pr=1.0, tau=2.0,
                                      return_info=True, **kw)
    assert info["triggered"] == [False, False]
    assert (cfg == prss).all()


def test_prss_triggered_with_no_passing_candidate_takes_the_argmin_and_changes_the_images(random_pipe):
    prompt = "a red circle in the top left"
    kw = dict(num_images=2, seed=3, num_inference_steps=5)
    cfg = random_pipe.generate(prompt, method="cfg", **kw)
    prss, info = random_pipe.generate(prompt, method="prss", lambda_ss=0.0, lambda_pr=0.0, tau=1e-6,
                                      return_info=True, **kw)
    assert info["triggered"] == [True, True]
    for chosen, magnitudes in zip(info["prompt"], info["magnitudes"]):
        assert prompt in magnitudes and len(magnitudes) > 1  # the original and every candidate were scored
        assert chosen == min(magnitudes, key=magnitudes.get)
    assert (cfg != prss).any()


def _first_step_magnitudes(pipe, prompt, **kw):
    """The prompt's first-step magnitude on each sample's x_T, as PRSS's search measured it."""
    _, info = pipe.generate(prompt, method="prss", lambda_ss=0.0, lambda_pr=1.0, tau=2.0, return_info=True, **kw)
    return [m[prompt] for m in info["magnitudes"]]


def test_prss_keeps_the_cfg_image_of_an_untriggered_sample_in_a_mixed_batch(random_pipe):
    prompt = "a red circle in the top left"
    kw = dict(num_images=2, seed=3, num_inference_steps=5)
    low, high = sorted(_first_step_magnitudes(random_pipe, prompt, **kw))
    cfg = random_pipe.generate(prompt, method="cfg", **kw)
    prss, info = random_pipe.generate(prompt, method="prss", lambda_ss=(low + high) / 2, lambda_pr=0.0, tau=1e-6,
                                      return_info=True, **kw)
    assert sorted(info["triggered"]) == [False, True]
    calm, hit = info["triggered"].index(False), info["triggered"].index(True)
    assert (prss[calm] == cfg[calm]).all()
    assert (prss[hit] != cfg[hit]).any()


def test_prss_per_prompt_decides_once_on_the_rms_of_the_samples_magnitudes(random_pipe):
    prompt = "a red circle in the top left"
    kw = dict(num_images=2, seed=3, num_inference_steps=5)
    low, high = sorted(_first_step_magnitudes(random_pipe, prompt, **kw))
    rms = ((low ** 2 + high ** 2) / 2) ** 0.5
    between = (rms + high) / 2  # above the RMS, below the larger sample's magnitude
    th = dict(lambda_pr=1.0, tau=2.0, return_info=True, **kw)
    _, per_sample = random_pipe.generate(prompt, method="prss", lambda_ss=between, **th)
    _, pooled = random_pipe.generate(prompt, method="prss", lambda_ss=between, per_prompt=True, **th)
    _, pooled_low = random_pipe.generate(prompt, method="prss", lambda_ss=(low + rms) / 2, per_prompt=True, **th)
    assert sorted(per_sample["triggered"]) == [False, True]
    assert pooled["triggered"] == [False, False]
    assert pooled_low["triggered"] == [True, True] and len(set(pooled_low["prompt"])) == 1  # one search


def test_prss_per_prompt_with_one_image_is_the_per_sample_method(random_pipe):
    prompt = "a red circle in the top left"
    kw = dict(num_images=1, seed=3, num_inference_steps=5, lambda_ss=0.0, lambda_pr=0.0, tau=1e-6, n_s=4)
    assert (random_pipe.generate(prompt, method="prss", **kw)
            == random_pipe.generate(prompt, method="prss", per_prompt=True, **kw)).all()


def test_prss_search_gives_each_sample_what_its_own_one_by_one_search_gives(random_pipe):
    prompt, n_s = "a red circle in the top left", 6
    kw = dict(num_images=3, seed=3, lambda_pr=1.0, tau=2.0, n_s=n_s)  # the run's steps: first_step_magnitude's t
    candidates = paraphrases(prompt, n=n_s, seed=0)
    x_T = random_pipe.initial_noise(3, 3)
    first = first_step_magnitude(random_pipe, random_pipe.encode([prompt] + candidates), x_T)  # (1 + n_s, 3)
    # under every sample's own magnitude (all trigger), above the smallest candidate's (one search stops early)
    lambda_ss = float(first[0].min() + first[1:].min()) / 2
    assert first[1:].min() < first[0].min()
    _, info = random_pipe.generate(prompt, method="prss", lambda_ss=lambda_ss, return_info=True, **kw)
    for b in range(3):
        table = dict(zip([prompt] + candidates, first[:, b].tolist()))
        alone = search_one_sample(prompt, candidates, table.get, lambda_ss)
        assert info["prompt"][b] == alone.prompt and list(info["magnitudes"][b]) == list(alone.magnitudes)
        assert info["magnitudes"][b] == pytest.approx(alone.magnitudes, rel=1e-4)
    assert len({len(m) for m in info["magnitudes"]}) > 1  # the samples' searches did stop at different places


def test_prss_scores_each_candidate_for_all_samples_in_one_unet_call(five_step_pipe):
    random_pipe, calls = five_step_pipe, []
    real = random_pipe.unet
    random_pipe.unet = lambda x, t, c: calls.append(len(x)) or real(x, t, c)
    try:
        random_pipe.generate("a red circle in the top left", method="prss", num_images=2, seed=3,
                             num_inference_steps=5, lambda_ss=0.0, lambda_pr=1.0, tau=2.0, n_s=4)
    finally:
        random_pipe.unet = real
    # first step: (u, p), 4 candidates, the target; then (u, target, p) at each of the 4 other steps
    assert calls == [2 * 2] + [2] * 4 + [2] + [3 * 2] * 4


def _unet_evals(pipe, method, **kw):
    real, pipe.unet = pipe.unet, CountingUNet(pipe.unet)  # the counter evaluate.py measures cost with
    try:
        pipe.generate("a red circle in the top left", method=method, num_images=2, seed=3, num_inference_steps=5,
                      **kw)
        return pipe.unet.count
    finally:
        pipe.unet = real


def test_prss_costs_what_cfg_costs_when_nothing_triggers(five_step_pipe):
    random_pipe = five_step_pipe
    assert _unet_evals(random_pipe, "prss", lambda_ss=1e9, lambda_pr=1.0, tau=2.0) == _unet_evals(random_pipe, "cfg")


def test_prss_adds_one_evaluation_per_step_per_triggered_sample_plus_the_search(five_step_pipe):
    random_pipe = five_step_pipe
    n_s, steps, B = 4, 5, 2
    evals = _unet_evals(random_pipe, "prss", lambda_ss=0.0, lambda_pr=1.0, tau=2.0, n_s=n_s)
    assert evals == _unet_evals(random_pipe, "cfg") + B * steps + B * n_s  # lambda_ss 0: every candidate scored


@pytest.mark.parametrize("method", ["prss", "pr"])
def test_a_triggered_hook_is_prompt_reanchor_of_its_three_predictions_at_every_step(random_pipe, record_steps,
                                                                                     monkeypatch, method):
    """eps_hat = prompt_reanchor(eps_u, eps_p, eps_target) at each step's x_t; the target is the searched prompt
    info["prompt"] for PRSS, and for PR only the embedding PE's optimize_embedding returns when asked for the
    prompt on the loop's x_T at the detection timestep with target lambda_ss. Here that is a stub's fixed
    embedding (another prompt's), so the expected target does not come from the code under test."""
    pipe, prompt, s, lambda_pr, tau = random_pipe, "a red circle in the top left", 2.0, 0.15, 0.5
    x_T, e_p = pipe.initial_noise(2, seed=3), pipe.encode([prompt])
    asked, e_stub = [], pipe.encode(["a blue square in the bottom right"]).expand(2, -1, -1).clone()
    monkeypatch.setattr(pr_only, "optimize_embedding",
                        lambda unet, context, uncond, x, t, target, *a, **kw: asked.append((context, x, t, target))
                        or (e_stub, [torch.zeros(len(x))]))
    hook, info = build_hook(method, pipe, prompt, x_T, s, lambda_ss=0.0, lambda_pr=lambda_pr, tau=tau)
    if method == "prss":
        assert any(chosen != prompt for chosen in info["prompt"])   # a paraphrase, not the prompt, is a target
        e_target = pipe.encode(info["prompt"])
    else:
        ((context, x, t, target),) = asked
        assert torch.equal(context, e_p.expand(2, -1, -1)) and torch.equal(x, x_T)
        assert (t, target) == (pipe.detection_timestep, 0.0)
        e_target = e_stub
    _, steps = record_steps(pipe, hook, x_T, 5)
    reanchored = []
    for x_t, t, eps in steps:
        eps_u, eps_p, eps_target = predict_noise(pipe.unet, x_t, t, [pipe.empty, e_p, e_target])
        assert torch.allclose(eps, prompt_reanchor(eps_u, eps_p, eps_target, s, lambda_pr, tau), atol=1e-5)
        reanchored.append(not torch.allclose(eps, classifier_free_guidance(eps_u, eps_target, s), atol=1e-4))
    assert any(reanchored) and not all(reanchored)  # the thresholds put some steps on each side of lambda_pr


def test_prss_needs_thresholds_when_the_pipe_has_none(random_pipe):
    with pytest.raises(ValueError, match="calibrated thresholds"):
        random_pipe.generate("a red circle in the top left", method="prss", num_images=1, num_inference_steps=2)


def test_prss_detects_at_the_calibrated_timestep_whatever_step_count_the_loop_runs(random_pipe, monkeypatch):
    """Thresholds are calibrated at the first step of the run's default schedule (leading spacing, 50 steps:
    t = 980). A 20-step loop starts at t = 950, but the search must still measure at 980."""
    assert random_pipe.schedule.timestep_spacing == "leading"
    monkeypatch.setattr(random_pipe.config, "num_inference_steps", 50)
    prompt = "a red circle in the top left"
    assert random_pipe.detection_timestep == 980
    _, info = random_pipe.generate(prompt, method="prss", num_images=2, seed=4, num_inference_steps=20,
                                   lambda_ss=1e9, lambda_pr=1.0, tau=2.0, return_info=True)
    x_T = random_pipe.initial_noise(2, 4)
    at_980 = first_step_magnitude(random_pipe, random_pipe.encode([prompt]), x_T)[0]
    random_pipe.config.num_inference_steps = 20                  # what detection at the loop's first step would see
    at_950 = first_step_magnitude(random_pipe, random_pipe.encode([prompt]), x_T)[0]
    measured = torch.tensor([m[prompt] for m in info["magnitudes"]], dtype=at_980.dtype)
    assert torch.allclose(measured, at_980, atol=1e-6) and not torch.allclose(measured, at_950, atol=1e-3)
