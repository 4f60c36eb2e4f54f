"""Prefect artifact keys and the markdown every stage's artifacts and cards are written in.

    create_table_artifact(table=rows, key=artifacts.key("gate", model))   # "gate-churn"
    f"| {artifacts.md(text)} |"                                           # a safe table cell

A leaf: no Prefect import, so the Ray workers and Serve replicas may use it too.
"""

import re

_NOT_ALLOWED = re.compile(r"[^a-z0-9]+")


def key(*parts: str) -> str:
    """A Prefect artifact key from its parts: lowercase letters, digits and single dashes only
    (what Prefect allows), e.g. `key("evaluation", "Churn_v2", "challenger")` ->
    "evaluation-churn-v2-challenger". A part with nothing usable in it is left out."""
    slugs = [_NOT_ALLOWED.sub("-", part.lower()).strip("-") for part in parts]
    return "-".join(s for s in slugs if s) or "driftloop"


def md(text: str) -> str:
    """`text` as one markdown table cell: pipes escaped, line breaks as spaces."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
