"""The options module is the one source: the docs table is generated from it."""
from dataclasses import fields
from pathlib import Path

import pytest

from sophia.options import ModelOptions, OptionError, TrainOptions, apply_overrides, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_docs_options_table_is_generated_from_the_options_module():
    current = (REPO_ROOT / "docs" / "OPTIONS.md").read_text()
    assert current == markdown_table(), "regenerate: python -m sophia.options > docs/OPTIONS.md"


@pytest.mark.parametrize("cls", [ModelOptions, TrainOptions])
def test_every_option_has_a_meaning_and_a_row(cls):
    table = markdown_table()
    for f in fields(cls):
        assert f.metadata.get("help"), f.name
        assert f"| `{f.name}` | {f.type} | `{f.default!r}` |" in table


def test_defaults_validate_and_a_bad_value_names_the_option():
    ModelOptions().validate()
    TrainOptions().validate()
    with pytest.raises(OptionError, match="'lr_decay_rate' must be > 0.0 and <= 1.0; got 1.5"):
        apply_overrides(TrainOptions(), {"lr_decay_rate": 1.5})
