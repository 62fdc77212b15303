"""Name-term-value (NTV) data model: features and training records as people write them."""

from math import isclose
from typing import Dict, List, Optional, Tuple

Name = str
Term = str
Value = float
NameTerm = Tuple[Name, Term]


class Feature:
    """One name-term-value triple, e.g. ``Feature("season", "winter", 1.0)``.

    Also used for model coefficients, where ``value`` is a mean or a variance.
    """

    # The (name, term) key is stored as one tuple, built once: index maps and conversions look up
    # millions of keys and would otherwise build a tuple per lookup.
    __slots__ = ("name_term", "value")

    def __init__(self, name: Name, term: Term, value: Value):
        self.name_term: NameTerm = (name, term)
        self.value = value

    @property
    def name(self) -> Name:
        """The feature's name."""
        return self.name_term[0]

    @name.setter
    def name(self, name: Name) -> None:
        self.name_term = (name, self.name_term[1])

    @property
    def term(self) -> Term:
        """The feature's term."""
        return self.name_term[1]

    @term.setter
    def term(self, term: Term) -> None:
        self.name_term = (self.name_term[0], term)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Feature):
            return NotImplemented
        return self.name == other.name and self.term == other.term and isclose(self.value, other.value)

    __hash__ = None  # equality is approximate in ``value``, so features are not hashable

    def __repr__(self) -> str:
        return f"Feature({self.name!r}, {self.term!r}, {self.value!r})"


class TrainingRecord:
    """One labelled example: raw label, sample weight, fixed-effect offset and NTV features.

    Unlike lambda-learner 0.1.0, ``label`` is kept as given (the original maps every label other
    than 1 to -1, which breaks regression). Logistic trainers accept {0, 1} or {-1, +1}.
    """

    __slots__ = ("label", "weight", "offset", "features", "context")

    def __init__(
        self,
        label: float,
        weight: float,
        offset: float,
        features: List[Feature],
        context: Optional[Dict[str, str]] = None,
    ):
        self.label = label
        self.weight = weight
        self.offset = offset
        self.features = features
        self.context = context

    @property
    def name_terms(self) -> List[NameTerm]:
        """The distinct ``(name, term)`` keys of this record's features, in order."""
        return list(dict.fromkeys(f.name_term for f in self.features))

    def __repr__(self) -> str:
        return (
            f"TrainingRecord(label={self.label!r}, weight={self.weight!r}, offset={self.offset!r}, "
            f"features={self.features!r})"
        )
