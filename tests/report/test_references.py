"""The sweep-file header comment parser."""

from __future__ import annotations

import pytest

from vit_ablate.report.references import match_reference, parse_baseline_comment, parse_reference_comments

TEXT = """\
# Position embeddings (paper Table 8)
# reference: model.pos_embed=none value=0.61382 metric=imagenet_5shot source="paper Table 8"
#reference:   model.pool=gap optim.lr=3e-4  value=0.5 source='paper Figure 9' note="read off the plot"
# baseline: model.pos_embed=1d
program: vit-ablate
parameters:
  model.pos_embed: {values: [none, 1d]}   # reference: in a trailing comment is not a header line
"""


def test_parse_reference_comments():
    refs = parse_reference_comments(TEXT)
    assert refs == [
        {
            "params": {"model.pos_embed": "none"},
            "value": 0.61382,
            "metric": "imagenet_5shot",
            "source": "paper Table 8",
        },
        {
            "params": {"model.pool": "gap", "optim.lr": "3e-4"},
            "value": 0.5,
            "metric": None,
            "source": "paper Figure 9",
            "note": "read off the plot",
        },
    ]


def test_parse_reference_errors_name_the_line():
    with pytest.raises(ValueError, match="line 2.*no value"):
        parse_reference_comments("# fine\n# reference: model.pos_embed=none metric=x\n")
    with pytest.raises(ValueError, match="not a number"):
        parse_reference_comments("# reference: model.pos_embed=none value=high\n")
    with pytest.raises(ValueError, match="no run parameter"):
        parse_reference_comments("# reference: value=0.5 source=x\n")
    with pytest.raises(ValueError, match="key=value"):
        parse_reference_comments("# reference: model.pos_embed none value=0.5\n")


def test_parse_baseline_comment():
    assert parse_baseline_comment(TEXT) == {"model.pos_embed": "1d"}
    assert parse_baseline_comment("program: x\n") is None


def test_match_reference_is_canonical_and_most_specific():
    refs = parse_reference_comments(TEXT) + [{"params": {"model.pool": "gap"}, "value": 0.4}]
    # 3e-4 in the comment matches 0.0003 as a resolved config writes it.
    hit = match_reference(refs, {"model.pool": "gap", "optim.lr": "0.0003", "seed": "0"})
    assert hit["value"] == 0.5
    assert match_reference(refs, {"model.pool": "gap", "optim.lr": "0.0008"})["value"] == 0.4
    assert match_reference(refs, {"model.pool": "cls"}) is None


def test_commas_inside_quotes_stay_and_commas_outside_separate():
    (ref,) = parse_reference_comments('# reference: model.pool=gap,optim.lr=1e-3 value=0.765 source="Beyer et al., Table 1 (S/16, GAP)"\n')
    assert ref["params"] == {"model.pool": "gap", "optim.lr": "1e-3"}
    assert ref["source"] == "Beyer et al., Table 1 (S/16, GAP)"
