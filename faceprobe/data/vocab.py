"""Shared task names and label vocabularies.

Categorical tasks are stored as class names (``FaceRecord.labels``) and as integer codes into the
task's vocabulary (the store). ``age`` is a regression task in years. A dataset whose own
vocabulary differs (race: UTKFace has 5 classes, FairFace 7) declares it in its reader and the
store records the vocabulary it was written with.
"""

from __future__ import annotations

AGE = "age"
REGRESSION_TASKS = frozenset({AGE})

# FairFace's age bins, used as ``age_group`` for every dataset (ages in years are binned with them).
AGE_GROUPS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]
_AGE_GROUP_UPPER = [2, 9, 19, 29, 39, 49, 59, 69]

YES_NO = ["no", "yes"]

DEFAULT_VOCABULARIES: dict[str, list[str] | None] = {
    "gender": ["male", "female"],
    "age": None,
    "age_group": AGE_GROUPS,
    "race": ["White", "Black", "Asian", "Indian", "Others"],
    "smiling": YES_NO,
    "eyeglasses": YES_NO,
    "pose": ["left_profile", "left", "frontal", "right", "right_profile"],
}

# Demographic tasks: evaluation breaks every metric down by these when a store has them.
DEMOGRAPHIC_TASKS = ("gender", "race", "age_group")


def age_group(age_years: float) -> str:
    """The FairFace bin of an age in years."""
    for name, upper in zip(AGE_GROUPS, _AGE_GROUP_UPPER, strict=False):
        if age_years <= upper:
            return name
    return AGE_GROUPS[-1]


def is_regression(task: str) -> bool:
    return task in REGRESSION_TASKS
