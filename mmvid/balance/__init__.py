"""BALANCERS: none, ogm-ge, gblend, pmr, greedy, umt, atf, opm. Imported explicitly to register them."""

from mmvid.balance import atf, gblend, greedy, ogm_ge, opm, pmr, umt  # noqa: F401
from mmvid.balance.base import Balancer
from mmvid.registry import BALANCERS


@BALANCERS.register("none")
class NoBalance(Balancer):
    """No balancing."""

    min_modalities = 1
