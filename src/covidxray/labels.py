"""Class names, the alias table that maps dataset labels onto them, and tasks.

Every dataset label goes through :func:`canonical_label`, so ``Covid-19``, ``COVID-19``,
``covid`` and ``COVID-19, ARDS`` all become ``covid``. Metrics look classes up by name,
never by position.
"""

from __future__ import annotations

import re

from covidxray.errors import CovidXrayError

COVID, NORMAL, PNEUMONIA = "covid", "normal", "pneumonia"

#: Classes of each task, in the order of the model's outputs.
TASKS: dict[str, tuple[str, ...]] = {
    "binary": (COVID, NORMAL),
    "three-class": (COVID, NORMAL, PNEUMONIA),
}

#: Lower-cased, punctuation-folded label -> canonical class. Documented in docs/data.md.
ALIASES: dict[str, str] = {
    # COVID-19: DarkCovidNet "Covid-19", PyImageSearch "covid", ieee8023 "COVID-19" and
    # "COVID-19, ARDS" / "Pneumonia/Viral/COVID-19" (hierarchical findings).
    "covid": COVID,
    "covid 19": COVID,
    "covid19": COVID,
    "covid 19 ards": COVID,
    "covid 19 with ards": COVID,
    "sars cov 2": COVID,
    "pneumonia viral covid 19": COVID,
    # No finding: DarkCovidNet "No_findings", NIH "No Finding", PyImageSearch "normal".
    "normal": NORMAL,
    "no finding": NORMAL,
    "no findings": NORMAL,
    "nofinding": NORMAL,
    "healthy": NORMAL,
    # Other pneumonias: DarkCovidNet "Pneumonia", ieee8023 bacterial, viral and fungal findings.
    "pneumonia": PNEUMONIA,
    "bacterial pneumonia": PNEUMONIA,
    "viral pneumonia": PNEUMONIA,
    "sars": PNEUMONIA,
    "mers": PNEUMONIA,
    "mers cov": PNEUMONIA,
    "ards": PNEUMONIA,
    "streptococcus": PNEUMONIA,
    "klebsiella": PNEUMONIA,
    "legionella": PNEUMONIA,
    "mycoplasma": PNEUMONIA,
    "chlamydophila": PNEUMONIA,
    "e coli": PNEUMONIA,
    "staphylococcus mrsa": PNEUMONIA,
    "influenza": PNEUMONIA,
    "varicella": PNEUMONIA,
    "herpes": PNEUMONIA,
    "pneumocystis": PNEUMONIA,
    "aspergillosis": PNEUMONIA,
    "nocardia": PNEUMONIA,
    "lipoid": PNEUMONIA,
    "lipoid pneumonia": PNEUMONIA,
    "bacterial": PNEUMONIA,
    "mycoplasma bacterial pneumonia": PNEUMONIA,
}

# ieee8023 writes hierarchical findings such as "Pneumonia/Bacterial/Klebsiella".
_HIERARCHY_PREFIXES = ("pneumonia bacterial ", "pneumonia viral ", "pneumonia fungal ", "pneumonia ")
# A label with one of these words is never guessed ("COVID-negative", "suspected pneumonia").
_DOUBT_WORDS = frozenset({"negative", "neg", "non", "not", "no", "suspect", "suspected", "unknown", "todo", "excluded"})


def _fold(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(label).lower()).strip()


def canonical_label(label: str) -> str | None:
    """Map a dataset label onto ``covid``, ``normal`` or ``pneumonia``; None when unknown."""
    key = _fold(label)
    if key in ALIASES:
        return ALIASES[key]
    if _DOUBT_WORDS & set(key.split()):
        return None
    for prefix in _HIERARCHY_PREFIXES:  # "Pneumonia/<kind>": a pneumonia, or COVID-19 if it says so
        if key.startswith(prefix):
            return COVID if ALIASES.get(key[len(prefix):]) == COVID else PNEUMONIA
    return None


def task_classes(task: str) -> tuple[str, ...]:
    """The classes of a task, in output order; a clear error for an unknown task."""
    try:
        return TASKS[task]
    except KeyError:
        raise CovidXrayError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}") from None


def covid_index(classes) -> int | None:
    """The output index of the ``covid`` class, or None when the task has none."""
    classes = tuple(classes)
    return classes.index(COVID) if COVID in classes else None


def probability_columns(classes) -> list[str]:
    """The columns that hold each class's probability in a predictions table: ``p_covid``, ..."""
    return [f"p_{c}" for c in classes]
