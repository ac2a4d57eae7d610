"""The preprocessing functions classify and training share: the fast in-place asinh."""

from __future__ import annotations

import math

import numpy as np
import torch

from galmerge.data.preprocess import asinh_


def test_asinh_matches_float64_to_about_one_ulp_over_the_whole_float32_range():
    mags = np.logspace(-38, 38.5, 20001, dtype=np.float64)
    values = np.concatenate([-mags, [0.0], mags]).astype(np.float32)
    x = torch.from_numpy(values.copy())
    out = asinh_(x)
    assert out.data_ptr() == x.data_ptr()  # in place
    ref = torch.asinh(torch.from_numpy(values).double())
    err = (out.double() - ref).abs() / ref.abs().clamp_min(1e-300)
    assert float(err.max()) <= 2.0 * torch.finfo(torch.float32).eps
    n = len(mags)
    assert torch.equal(out[:n], -out[n + 1 :]) and out[n] == 0  # odd, exactly


def test_asinh_keeps_signed_zeros_infinities_and_nan():
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 3.4e38, -3.4e38])
    out = asinh_(x.clone())
    assert out[0] == 0 and math.copysign(1, out[0]) == 1
    assert out[1] == 0 and math.copysign(1, out[1]) == -1
    assert out[2] == math.inf and out[3] == -math.inf and math.isnan(out[4])
    assert out[5] == torch.asinh(x[5]) and out[6] == torch.asinh(x[6])


def test_asinh_of_a_stamp_batch_agrees_with_torch_asinh():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 75, 75, generator=gen) * 40.0
    np.testing.assert_allclose(asinh_(x.clone()).numpy(), torch.asinh(x).numpy(), rtol=3e-7)
