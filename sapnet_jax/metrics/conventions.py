"""What each reported metric key means and which way it improves: the one place reports,
tables, `compare` and the best-checkpoint choice read them from."""

from __future__ import annotations

# Families by the key's first word: psnr_rgb, ssim_y_matlab, niqe_input, lpips_alex, ...
HIGHER_IS_BETTER = ("psnr", "ssim")
LOWER_IS_BETTER = ("niqe", "brisque", "lpips")

CONVENTIONS = {
    "psnr_rgb": "PSNR on RGB in [0,1] (SAPNet paper's 'sklearn' numbers)",
    "ssim_rgb": "SSIM on RGB, 11x11 Gaussian sigma 1.5, valid region (scikit-image, data_range=1)",
    "psnr_y": "PSNR on Y (BasicSR: 16 + 65.481R + 128.553G + 24.966B, 0..255, not rounded)",
    "ssim_y": "SSIM on Y (BasicSR: Gaussian 11x11 sigma 1.5, valid region)",
    "psnr_y_matlab": "PSNR on Y as MATLAB rgb2ycbcr(im2double) with peak 1 (equals psnr_y)",
    "ssim_y_matlab": "SSIM on Y*255 as Wang's ssim.m (box downsampling for sides >= 384 px)",
    "niqe": "NIQE of the output, Y of the 8-bit image, 96x96 blocks (BasicSR calculate_niqe; "
            "lower is better)",
    "brisque": "BRISQUE of the output, grey of the 8-bit image, LIVE SVR (brisque package "
               "0.2.0, not MATLAB brisque.m; lower is better)",
    "lpips_alex": "LPIPS v0.1 AlexNet distance to the clean image, whole image, inputs in "
                  "[-1, 1] (lpips package defaults; lower is better)",
    "niqe_input": "NIQE of the rainy input (same convention)",
    "brisque_input": "BRISQUE of the rainy input (same convention)",
}


def higher_is_better(name: str) -> bool:
  """True for PSNR/SSIM keys, False for NIQE/BRISQUE/LPIPS keys; ValueError otherwise."""
  family = name.split("_")[0]
  if family in HIGHER_IS_BETTER or family in LOWER_IS_BETTER:
    return family in HIGHER_IS_BETTER
  raise ValueError(f"{name!r}: unknown metric direction; metric names start with one of "
                   f"{', '.join(HIGHER_IS_BETTER + LOWER_IS_BETTER)}")


def arrow(name: str) -> str:
  """The column mark of a table: ↑ where higher is better, ↓ where lower is."""
  return "↑" if higher_is_better(name) else "↓"
