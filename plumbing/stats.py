"""The numbers an accuracy is reported with: the mean of per-item scores, its standard error, and the change
between two evaluations of the same items with the standard error of the per-item differences."""

import math


def standard_error(values, fewer_than_two=0.0):
    """s/√n with the sample standard deviation (n − 1); `fewer_than_two` for fewer than two values, where s is
    undefined (0 by default; NaN where a table must show that no error was measured)."""
    n = len(values)
    if n < 2:
        return fewer_than_two
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def mean_se(values, fewer_than_two=0.0):
    """(mean, standard error) of per-item scores (or of runs); `fewer_than_two` as standard_error's."""
    return sum(values) / len(values), standard_error(values, fewer_than_two)


def paired_change(before, after):
    """(mean before, mean after, standard error of the mean change): per-item scores of the same items, so
    the error is that of the per-item differences, in which each item's own difficulty cancels."""
    change = [a - b for a, b in zip(after, before, strict=True)]
    return sum(before) / len(before), sum(after) / len(after), standard_error(change)
