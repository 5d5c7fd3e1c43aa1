"""Image quality as pure functions on arrays: full-reference metrics in each convention of the
literature, no-reference NIQE and BRISQUE with their parameter files (iqa_params/), and what
each reported key means and which way it improves (`conventions`).

May import: nothing else from the package (a score depends only on the images).
"""
