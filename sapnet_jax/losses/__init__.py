"""What training minimises: SAPNet's losses (negative SSIM, PCL, LPIPS, segmentation),
MSNet's (matching, supervised), the frozen networks they run (`frozen_nets`: built and loaded
from config) and the per-family dispatch (`objectives`).

May import: utils, models, metrics, weights.
"""
