"""IndexMap: the translation between (name, term) keys and column indices."""

from operator import attrgetter
from typing import Dict, Iterable, List, Tuple

from ._ntv import Feature, NameTerm, TrainingRecord

INTERCEPT_NAME = "intercept"
INTERCEPT_TERM = "intercept"
INTERCEPT: NameTerm = (INTERCEPT_NAME, INTERCEPT_TERM)
_name_term = attrgetter("name_term")


class IndexMap:
    """Maps each (name, term) to a column index; the intercept is always index 0.

    Examples
    --------
    >>> imap = IndexMap()
    >>> imap.batch_push([("season", "winter"), ("season", "spring"), ("season", "winter")])
    (2, 2)
    >>> imap.get_index(("season", "spring")), len(imap)
    (2, 3)
    """

    def __init__(self, intercept_name: str = INTERCEPT_NAME, intercept_term: str = INTERCEPT_TERM):
        self._intercept_nt: NameTerm = (intercept_name, intercept_term)
        self._nt_to_index: Dict[NameTerm, int] = {}
        self._index_to_nt: List[NameTerm] = []
        self.push(self._intercept_nt)

    @property
    def intercept_nt(self) -> NameTerm:
        """The (name, term) of the intercept."""
        return self._intercept_nt

    @property
    def intercept_index(self) -> int:
        """Column of the intercept (always 0)."""
        return 0

    def push(self, name_term: NameTerm) -> None:
        """Index ``name_term`` if it is new; no-op otherwise."""
        if name_term not in self._nt_to_index:
            self._nt_to_index[name_term] = len(self._index_to_nt)
            self._index_to_nt.append(name_term)

    def batch_push(self, name_terms: Iterable[NameTerm]) -> Tuple[int, int]:
        """Index many keys; return (number newly added, number of distinct keys offered)."""
        before = len(self._index_to_nt)
        distinct = dict.fromkeys(name_terms)
        index = self._nt_to_index
        for nt in distinct:
            if nt not in index:
                index[nt] = len(self._index_to_nt)
                self._index_to_nt.append(nt)
        return len(self._index_to_nt) - before, len(distinct)

    def get_nt(self, index: int) -> NameTerm:
        """The (name, term) at ``index``; ``IndexError`` if there is none."""
        if 0 <= index < len(self._index_to_nt):
            return self._index_to_nt[index]
        raise IndexError(f"Index {index} is not in the index map (size {len(self)}).")

    def get_index(self, name_term: NameTerm) -> int:
        """The index of ``name_term``; ``IndexError`` if it was never pushed."""
        try:
            return self._nt_to_index[name_term]
        except KeyError:
            raise IndexError(f"NameTerm {name_term} is not in the index map.") from None

    def __contains__(self, name_term) -> bool:
        return name_term in self._nt_to_index

    @property
    def name_terms(self) -> List[NameTerm]:
        """All keys in index order (a copy)."""
        return list(self._index_to_nt)

    def __len__(self) -> int:
        return len(self._index_to_nt)

    def __repr__(self) -> str:
        return "[" + "; ".join(f"{nt}:{i}" for i, nt in enumerate(self._index_to_nt)) + "]"

    @staticmethod
    def from_records_means_and_variances(
        training_records: Iterable[TrainingRecord],
        coefficient_mean: Iterable[Feature],
        coefficient_vars: Iterable[Feature],
    ) -> Tuple["IndexMap", Dict[str, int]]:
        """Index the model's coefficients first, then any new keys found in the records.

        Returns the map and counts of keys found in both, only in the coefficients, and only in
        the records.
        """
        imap = IndexMap()
        coeff_nts = list(map(_name_term, coefficient_mean))
        coeff_nts += map(_name_term, coefficient_vars or ())
        coeff_added, _ = imap.batch_push(coeff_nts)
        # A list comprehension (CPython specialises its attribute reads) is faster here than map().
        record_added, record_seen = imap.batch_push([f.name_term for r in training_records for f in r.features])
        in_both = record_seen - record_added
        return imap, {
            "num_nts_in_both": in_both,
            "num_nts_in_coeffs_only": coeff_added - in_both,
            "num_nts_in_records_only": record_added,
        }
