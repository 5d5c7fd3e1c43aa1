"""compare's Markdown table: one column per metric any model reports, each marked with the way
it improves (metrics/conventions), so a reader ranks the models the right way round."""

from sapnet_jax.evaluation import comparison


def _parse(table: str) -> tuple[list[str], list[list[str]]]:
  """(header cells, body rows of cells) of a Markdown table."""
  rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
          for line in table.strip().splitlines()]
  assert set(table.splitlines()[1]) <= {"|", "-"}, table  # the separator line
  return rows[0], rows[2:]


def test_each_column_is_marked_with_the_way_it_improves():
  means = {"pdu": {"psnr_rgb": 27.5, "ssim_rgb": 0.88, "lpips_alex": 0.21, "niqe": 4.2},
           "ms": {"psnr_rgb": 26.25, "brisque": 31.0, "lpips_alex": 0.3}}
  head, body = _parse(comparison.markdown_table(means))
  assert head[0] == "model"
  # LPIPS is a distance to the clean image and NIQE/BRISQUE score artefacts: lower is better.
  marks = dict(cell.rsplit(" ", 1) for cell in head[1:])
  assert marks == {"psnr_rgb": "↑", "ssim_rgb": "↑", "lpips_alex": "↓", "niqe": "↓",
                   "brisque": "↓"}
  # Each model's row holds its own means, and a blank where it reports none.
  cells = {row[0]: dict(zip(marks, row[1:])) for row in body}
  assert list(cells) == ["pdu", "ms"]
  for label, row in cells.items():
    for key, cell in row.items():
      if key in means[label]:
        assert float(cell) == round(means[label][key], 4), (label, key, cell)
      else:
        assert cell == "", (label, key, cell)


def test_a_metric_no_model_reports_has_no_column():
  head, _ = _parse(comparison.markdown_table({"a": {"lpips_alex": 0.5}, "b": {"lpips_alex": 0.4}}))
  assert head == ["model", "lpips_alex ↓"]
