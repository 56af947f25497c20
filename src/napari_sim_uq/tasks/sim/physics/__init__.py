"""SIM optics: illumination patterns, PSF/OTF, FFT convolution, binning, forward model and
exact variance propagation (DESIGN.md section 4). Pure PyTorch, no Qt/napari imports."""

from napari_sim_uq.tasks.sim.physics.binning import (
    bin_down,
    box_average,
    box_filter_full,
    check_hr_factor,
    downsample,
)
from napari_sim_uq.tasks.sim.physics.fftconv import (
    conv2d_direct,
    conv2d_direct_same,
    conv2d_direct_sampled,
    fft_convolve,
    fft_convolve_same,
    fft_convolve_sampled,
    next_fast_len,
)
from napari_sim_uq.tasks.sim.physics.forward import binned_offset, sampled_conv_sum, sim_forward
from napari_sim_uq.tasks.sim.physics.patterns import (
    illumination_patterns,
    pattern_angles,
    wave_vectors,
)
from napari_sim_uq.tasks.sim.physics.psf import (
    airy_first_zero,
    airy_psf,
    gaussian_psf,
    gaussian_sigma_from_na,
    psf_to_otf,
)
from napari_sim_uq.tasks.sim.physics.variance import (
    binned_conv_variance,
    conv_variance,
    forward_mean_and_variance,
    naive_binned_variance,
    product_variance,
    propagate_variance,
    softmax_psf_covariance,
    sum_to_one_lowrank,
)

__all__ = [
    "airy_first_zero",
    "airy_psf",
    "bin_down",
    "binned_offset",
    "binned_conv_variance",
    "box_average",
    "box_filter_full",
    "check_hr_factor",
    "conv2d_direct",
    "conv2d_direct_same",
    "conv2d_direct_sampled",
    "conv_variance",
    "downsample",
    "fft_convolve",
    "fft_convolve_same",
    "fft_convolve_sampled",
    "forward_mean_and_variance",
    "gaussian_psf",
    "gaussian_sigma_from_na",
    "illumination_patterns",
    "naive_binned_variance",
    "next_fast_len",
    "pattern_angles",
    "product_variance",
    "propagate_variance",
    "psf_to_otf",
    "sampled_conv_sum",
    "softmax_psf_covariance",
    "sum_to_one_lowrank",
    "sim_forward",
    "wave_vectors",
]
