"""The phantom chest world: radiographs rendered from report findings, with the exact mask of every finding.

It is the ground truth of every pathology figure in the project and the training set of the embedded
generator: real chest radiographs with pixel-exact lesion masks cannot be had here, so they are drawn.
"""

from medsign_forensics.phantom.renderer import SIZES, FindingMask, PhantomStudy, render_report, render_study

__all__ = ["SIZES", "FindingMask", "PhantomStudy", "render_report", "render_study"]
