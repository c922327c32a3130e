"""The README's family/knob table is what trying every family finds (tests/family_table.py)."""

import family_table


def test_the_readme_family_table_is_what_trying_each_family_finds():
    with open(family_table.README, encoding="utf-8") as f:
        shown = family_table.readme_table(f.read())
    assert shown is not None, f"README.md has no {family_table.BEGIN} block"
    generated = family_table.table()
    assert shown == generated, "README.md's family table is stale; run: python tests/family_table.py --write"
    # what this session built: all three knobs on every registered family, in the sampler and the pipelines
    for family in ("flux", "sd3", "wan", "qwen-image", "flux2"):
        row = next(line for line in generated.splitlines() if line.startswith(f"| {family} |"))
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[2:6] == ["yes"] * 4, row  # three knobs, and hasten's sampler / training
