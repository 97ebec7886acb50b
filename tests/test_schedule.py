import pytest
import torch
from diffusers import DDPMScheduler

from diti.diffusion.schedule import NoiseSchedule, extract


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule(1000, 1e-4, 0.02)


def test_shift_coefficient_reference_values(schedule):
    # docs/method.md: c(100) = -0.318, c(500) = -0.955, c(999) = -0.990, c(0) = 0
    assert schedule.shift[0].item() == 0.0
    for t, ref in ((100, -0.318), (500, -0.955), (999, -0.990)):
        assert schedule.shift[t].item() == pytest.approx(ref, abs=5e-4)
    assert schedule.shift[10].item() == pytest.approx(-0.04, abs=1e-3)


def test_weight_reference_values(schedule):
    snr = schedule.abar / (1 - schedule.abar)
    torch.testing.assert_close(schedule.weight, snr**0.1 / (1 + snr))
    assert int(schedule.weight.argmax()) in range(465, 486)  # "lambda peaks near t = 475"
    assert schedule.weight[10].item() == pytest.approx(4e-3, rel=0.05)


def test_schedule_matches_diffusers_ddpm(schedule):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    torch.testing.assert_close(schedule.betas, ref.betas)
    torch.testing.assert_close(schedule.abar, ref.alphas_cumprod, rtol=1e-5, atol=1e-6)


def test_q_sample_and_predict_x0_invert(schedule):
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    x_t = schedule.q_sample(x0, t, eps)
    expected = schedule.abar[t].sqrt()[:, None, None, None] * x0 + (1 - schedule.abar[t]).sqrt()[:, None, None, None] * eps
    torch.testing.assert_close(x_t, expected)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, eps), x0, atol=2e-4, rtol=1e-4)


def test_extract_shape():
    coef = torch.arange(10.0)
    out = extract(coef, torch.tensor([1, 9]), (2, 3, 4, 4))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [1.0, 9.0]


def test_mismatched_scheduler_config_is_rejected(schedule):
    schedule.check_diffusers_config(schedule.to_diffusers_config())
    with pytest.raises(ValueError, match="beta_end"):
        schedule.check_diffusers_config({"beta_start": 1e-4, "beta_end": 0.012, "num_train_timesteps": 1000})
    with pytest.raises(ValueError, match="beta_schedule"):
        schedule.check_diffusers_config({"beta_schedule": "scaled_linear"})
    with pytest.raises(ValueError, match="prediction_type"):
        schedule.check_diffusers_config({"prediction_type": "v_prediction"})


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="timesteps"):
        NoiseSchedule(0)
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule(1000, 0.03, 0.02)
