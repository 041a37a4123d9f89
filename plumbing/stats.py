"""The numbers an accuracy is reported with: the mean of per-item scores, its standard error, and the change
between two evaluations of the same items with the standard error of the per-item differences."""

import math


def standard_error(values):
    """s/√n with the sample standard deviation (n − 1); 0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def mean_se(values):
    """(mean, standard error) of per-item scores."""
    return sum(values) / len(values), standard_error(values)


def paired_change(before, after):
    """(mean before, mean after, standard error of the mean change): per-item scores of the same items, so
    the error is that of the per-item differences, in which each item's own difficulty cancels."""
    change = [a - b for a, b in zip(after, before, strict=True)]
    return sum(before) / len(before), sum(after) / len(after), standard_error(change)
